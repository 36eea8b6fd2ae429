"""Apply: carry out a plan through the providers, in dependency order, in parallel.

Creates, updates and replaces run first. A resource is sent to its provider only when all its inputs are
known, which means every resource whose outputs it reads has been settled in this run; after each settle
the still-blocked resources are evaluated again (one Nix pass for all of them, overlapping with provider
calls in flight). Then deletes run in reverse dependency order: a resource is deleted only after every
resource recorded as reading it is gone. A failure skips what depends on it, never independent siblings,
and every completed operation is kept in ``Executor.state`` for the caller to record, even when the run
fails.
"""

from __future__ import annotations

import datetime
import heapq
import queue
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from controller import failpoints, protocol
from controller.errors import NixgitopsError, ProviderError
from controller.evaluation import Evaluation
from controller.graph import closure, describe_cycle, find_cycle
from controller.journal import Journal
from controller.model import DesiredResource, KnownOutputs, ResourceState
from controller.planning import Action, Change, Plan, decide
from controller.provider_client import Providers
from controller.sealing import scratch_wrap
from controller.sensitive import Wrap, mark_outputs, redact

Evaluate = Callable[[Mapping[str, Mapping[str, Any]], set[str]], Evaluation]
Prepare = Callable[[str, DesiredResource | None], tuple[str, ...]]
"""Realise what a provider (by name) and the desired resource (None for a delete) refer to; the store paths."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one resource in a run."""

    path: str
    action: Action
    status: str  # "ok" | "failed" | "skipped"
    message: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Event:
    """A progress report: ``kind`` is "start", "ok", "failed", "skipped" or "waiting" (interrupted)."""

    kind: str
    path: str
    action: Action
    message: str = ""
    seconds: float = 0.0


class HalfReplaced(ProviderError):
    """A replace destroyed the old resource but could not create the new one."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Executor:
    providers: Providers
    evaluate: Evaluate
    parallelism: int = 8
    source_commit: str | None = None
    report: Callable[[Event], None] = lambda event: None
    journal: Journal | None = None
    base_rank: int = 1
    """The rank of what runs at once: above every rank in state (see ``ResourceState.rank``)."""
    prepare: Prepare | None = None
    """Builds what an operation refers to before its provider starts or its request goes out (``Engine``)."""
    state: dict[str, ResourceState] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    outside: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Outputs of resources outside the deployed member: known, never changed (``Planned.outside``)."""
    """What to say of an operation that succeeded in its own way (a resource forgotten instead of deleted)."""
    reevaluated: set[str] = field(default_factory=set)
    """The resources whose inputs became known during the run (their edges are refreshed after it)."""
    reads_seen: dict[str, set[str]] = field(default_factory=dict)
    """Every resource each resource was seen to read, over all the run's passes."""
    wrap: Wrap = scratch_wrap
    """Makes the outputs a resource declares sensitive ``Sensitive`` (the deployment's sealer's)."""
    _rank_of: dict[str, int] = field(default_factory=dict)
    _running: dict[Future[tuple[ResourceState | None, float]], tuple[str, Action]] = field(default_factory=dict)
    _completed: queue.Queue[Future[Any]] = field(default_factory=queue.Queue)

    # -- one operation (runs in a worker thread) -----------------------------------------------------------

    def _record(
        self,
        desired: DesiredResource,
        outputs: Mapping[str, Any],
        deps: frozenset[str],
        store_paths: tuple[str, ...] | None = None,
    ) -> ResourceState:
        old = self.state.get(desired.path)
        if store_paths is None:
            store_paths = old.store_paths if old is not None else ()
        stamp = now()
        return ResourceState(
            path=desired.path,
            type=desired.type,
            inputs=dict(desired.inputs),
            outputs=dict(outputs),
            dependencies=tuple(sorted(deps - {desired.path})),
            prevent_destroy=desired.prevent_destroy,
            source_commit=self.source_commit,
            created_at=old.created_at if old is not None and old.type == desired.type else stamp,
            updated_at=stamp,
            rank=self._rank_of.get(desired.path, self.base_rank),
            read=old.read if old is not None else False,
            store_paths=tuple(sorted(store_paths)),
            stateless=desired.stateless,
            state_handler=desired.state_handler,
            sensitive_outputs=tuple(sorted(desired.sensitive_outputs)),
        )

    def _answered(self, record: ResourceState, body: Mapping[str, Any]) -> ResourceState:
        """``record`` with the outputs of a provider's answer, those it declares sensitive made so."""
        outputs = dict(body["outputProperties"])
        return replace(record, outputs=mark_outputs(outputs, record.sensitive_outputs, self.wrap))

    def _call(
        self, provider: str, message: dict[str, Any], what: str, path: str, record: ResourceState | None
    ) -> dict[str, Any]:
        """One provider call, journaled: the intent before it goes out, the new state record after.

        ``record`` is the state to keep with the response's outputs; None when the call deletes ``path``.
        """
        journal = self.journal
        op: int | None = None

        def before_send(pid: int) -> None:
            nonlocal op
            if journal is not None:
                spec = self.providers.specs[provider]
                op = journal.intent(
                    {
                        "path": path,
                        "provider": {"name": spec.name, "executable": spec.executable, "args": list(spec.args)},
                        "message": message,
                        "record": record.to_json() if record is not None else None,
                        "pid": pid,
                    }
                )
            failpoints.hit("provider-request")

        try:
            hide = record.sensitive_outputs if record is not None else ()
            body = self.providers.call(provider, message, what=what, before_send=before_send, hide=hide)
        except ProviderError as exc:
            if journal is not None and op is not None and not exc.fatal:
                journal.failed(op)  # refused: nothing happened that state must remember
            raise
        failpoints.hit("provider-response")
        if journal is not None and op is not None:
            done = self._answered(record, body) if record is not None else None
            journal.result(op, done.to_json() if done is not None else None, path)
        return body

    def _destroy(self, old: ResourceState) -> None:
        if self.prepare is not None:
            self.prepare(old.provider, None)
        what = f"destroyResourceRequest for {old.path!r}"
        message = protocol.destroy_request(old.resource_type, old.inputs, old.outputs)
        self._call(old.provider, message, what, old.path, None)

    def _destroy_or_forget(self, old: ResourceState) -> None:
        """Delete ``old``; a stateless resource has nothing to delete, and one whose provider cannot delete
        (NixOps4's local provider: its main branch does not know the request, its tfproto branch answers "not
        implemented") is left as it is: both are forgotten, so that the deployment is never stuck
        (docs/nixops4.md). Any other failure raises."""
        if old.stateless:
            self.notes[old.path] = "forgotten: a stateless resource has nothing to delete"
            return
        try:
            self._destroy(old)
        except ProviderError as exc:
            if exc.fatal or not protocol.cannot_delete(str(exc)):
                raise
            self.notes[old.path] = (
                f"forgotten, not deleted: provider {old.provider!r} cannot delete a {old.resource_type!r}; whatever"
                " it made is left as it is (remove it by hand if it must go)"
            )

    def _operate(self, change: Change, desired: DesiredResource | None, deps: frozenset[str]) -> ResourceState | None:
        old = change.before
        if change.action is Action.DELETE:
            assert old is not None
            self._destroy_or_forget(old)
            return None
        assert desired is not None
        if desired.stateless:  # made again, never updated: NixOps4's createResourceRequest with isStateful false
            paths = self.prepare(desired.provider, desired) if self.prepare is not None else ()
            if change.action is Action.REPLACE and old is not None:
                self._destroy_or_forget(old)
            record = self._record(desired, {}, deps, paths)
            request = protocol.create_request(desired.resource_type, desired.inputs, is_stateful=False)
            what = f"createResourceRequest for {desired.path!r}"
            body = self._call(desired.provider, request, what, desired.path, record)
            return self._answered(record, body)
        if change.action is Action.UPDATE:
            assert old is not None
            if dict(old.inputs) == dict(desired.inputs):  # only lifecycle changed: no provider call
                return self._record(desired, old.outputs, deps)
            paths = self.prepare(desired.provider, desired) if self.prepare is not None else ()
            what = f"updateResourceRequest for {desired.path!r}"
            request = protocol.update_request(desired.resource_type, old.inputs, old.outputs, desired.inputs)
            record = self._record(desired, {}, deps, paths)
            body = self._call(desired.provider, request, what, desired.path, record)
            return self._answered(record, body)
        paths = self.prepare(desired.provider, desired) if self.prepare is not None else ()  # before a destroy
        if change.action is Action.REPLACE:
            assert old is not None
            self._destroy_or_forget(old)
        what = f"createResourceRequest for {desired.path!r}"
        record = self._record(desired, {}, deps, paths)
        try:
            request = protocol.create_request(desired.resource_type, desired.inputs)
            body = self._call(desired.provider, request, what, desired.path, record)
        except ProviderError as exc:
            if change.action is Action.REPLACE:
                raise HalfReplaced(f"{exc} The old resource was already destroyed.", fatal=exc.fatal) from None
            raise
        return self._answered(record, body)

    # -- the run -------------------------------------------------------------------------------------------

    def run(
        self,
        plan: Plan,
        desired: Mapping[str, DesiredResource],
        dependencies: Mapping[str, frozenset[str]],
        state: Mapping[str, ResourceState],
        refresh: Mapping[str, ResourceState] | None = None,
    ) -> dict[str, Outcome]:
        """Carry out ``plan``; ``refresh`` holds records of unchanged resources to keep instead of the old ones (new
        edges, the mark of being read: ``planning.refreshed``)."""
        self.state = dict(state)
        self.state.update({p: r for p, r in (refresh or {}).items() if p in self.state})
        with ThreadPoolExecutor(max_workers=max(1, self.parallelism), thread_name_prefix="apply") as pool:
            try:
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate") as evaluator:
                    self._converge(plan, dict(desired), dependencies, pool, evaluator)
                self._delete(plan, pool)
            except BaseException:
                self._drain()
                raise
        return self.outcomes

    def _drain(self) -> None:
        """Interrupted: start nothing more, and record the operations already in flight when they end."""
        for future, (path, action) in list(self._running.items()):
            if future.cancel():
                self._finish(path, action, "skipped", "not started: the run was interrupted")
            else:
                self.report(Event("waiting", path, action))
                wait([future])
                self._settle(future, path, action)
        self._running.clear()

    def _evaluate_each(
        self, known: Mapping[str, Mapping[str, Any]], asked: set[str]
    ) -> tuple[dict[str, DesiredResource], dict[str, str]]:
        """Evaluate the asked resources in one pass; when that fails, one by one, so that one resource's
        error fails only that resource."""
        try:
            return dict(self.evaluate(known, asked).resources), {}
        except NixgitopsError as exc:
            if len(asked) == 1:
                return {}, {next(iter(asked)): str(exc)}
        resources: dict[str, DesiredResource] = {}
        errors: dict[str, str] = {}
        for path in sorted(asked):
            try:
                resources.update(self.evaluate(known, {path}).resources)
            except NixgitopsError as exc:
                errors[path] = str(exc)
        return resources, errors

    def _finish(self, path: str, action: Action, status: str, message: str = "", seconds: float = 0.0) -> None:
        message = redact(message)  # (a provider's error may quote what it was sent)
        self.outcomes[path] = Outcome(path, action, status, message, seconds)
        self.report(Event(status, path, action, message, seconds))

    def _submit(
        self, pool: ThreadPoolExecutor, change: Change, desired: DesiredResource | None, deps: frozenset[str]
    ) -> Future[tuple[ResourceState | None, float]]:
        self.report(Event("start", change.path, change.action))

        def job() -> tuple[ResourceState | None, float]:
            started = time.monotonic()
            result = self._operate(change, desired, deps)
            return result, time.monotonic() - started

        future = pool.submit(job)
        future.add_done_callback(self._completed.put)
        return future

    def _next_done(self) -> Future[Any]:
        """The next finished operation or evaluation: O(1) per event, however many are in flight."""
        return self._completed.get()

    def _settle(self, future: Future[tuple[ResourceState | None, float]], path: str, action: Action) -> bool:
        """Record one finished operation; True when it succeeded."""
        try:
            result, seconds = future.result()
        except HalfReplaced as exc:
            self.state.pop(path, None)
            self._finish(path, action, "failed", str(exc))
            return False
        except NixgitopsError as exc:
            self._finish(path, action, "failed", str(exc))
            return False
        if result is None:
            self.state.pop(path, None)
        else:
            self.state[path] = result
        self._finish(path, action, "ok", self.notes.pop(path, ""), seconds=seconds)
        return True

    def _converge(
        self,
        plan: Plan,
        desired: dict[str, DesiredResource],
        dependencies: Mapping[str, frozenset[str]],
        pool: ThreadPoolExecutor,
        evaluator: ThreadPoolExecutor,
    ) -> None:
        """Creates, updates and replaces. Work per event is proportional to what the event changed."""
        moving = {Action.CREATE, Action.UPDATE, Action.REPLACE}
        actions = {c.path: c.action for c in plan.changes if c.action in moving}
        ready = {p for p in actions if desired[p].ready}  # known inputs, not yet submitted
        blocked = set(actions) - ready  # waiting for outputs of others
        unsettled = set(actions)  # outputs not final yet: ready, blocked or running
        failed: set[str] = set()
        running = self._running
        evaluation: Future[tuple[dict[str, DesiredResource], dict[str, str]]] | None = None
        asked: set[str] = set()  # the paths the running evaluation was asked about
        # A blocked resource is evaluated again once a resource it was seen waiting for has settled; one whose
        # blocker is not known (its whole inputs failed without a marker) is evaluated after every settle.
        waiting_on: dict[str, set[str]] = {}
        opaque: set[str] = set()
        candidates: set[str] = set()
        stale = False  # something settled since the last evaluation started

        seen = self.reads_seen  # every read seen, over all passes
        for path in actions:
            seen[path] = set(desired[path].reads | desired[path].blocked_by)
        rounds = 0  # evaluations started: a resource made ready by the k-th gets rank base + k

        def deps_of(path: str) -> frozenset[str]:
            return dependencies.get(path, frozenset()) | seen.get(path, set())

        def wait_for(path: str) -> None:
            if desired[path].blocked_by & failed:
                return  # stuck for good: reported as skipped at the end
            blockers = desired[path].blocked_by & unsettled
            if not blockers:
                opaque.add(path)
            for blocker in blockers:
                waiting_on.setdefault(blocker, set()).add(path)

        # final outputs: those of resources that do not change in this run, and of each one that settles
        known = KnownOutputs({**self.outside, **{p: s.outputs for p, s in self.state.items() if p not in unsettled}})

        def settled(path: str) -> None:
            nonlocal stale
            stale = True
            if path in self.state:
                known.set(path, self.state[path].outputs)
            candidates.update(waiting_on.pop(path, ()))

        for path in blocked:
            wait_for(path)
        while True:
            for path in sorted(ready):
                change = decide(desired[path], self.state.get(path))
                if change.action is Action.NOOP:
                    unsettled.discard(path)
                    old = self.state.get(path)
                    if old is not None:  # what it reads and where it stands in the order may have changed
                        rank = self._rank_of.get(path, self.base_rank)
                        edges = tuple(sorted(deps_of(path) - {path}))
                        self.state[path] = replace(old, dependencies=edges, rank=rank)
                    self._finish(path, Action.NOOP, "ok", "inputs unchanged once known")
                    settled(path)
                    continue
                running[self._submit(pool, change, desired[path], deps_of(path))] = (path, change.action)
            ready.clear()
            if evaluation is None and stale and (candidates or opaque):
                asked = (candidates | opaque) & blocked
                candidates.clear()
                opaque -= asked
                rounds += 1
                for path in asked:
                    self._rank_of[path] = self.base_rank + rounds
                evaluation = evaluator.submit(self._evaluate_each, known, asked)
                evaluation.add_done_callback(self._completed.put)
                stale = False
            if not running and evaluation is None:
                break
            future = self._next_done()
            if future is evaluation:
                evaluation = None
                answer, errors = future.result()  # _evaluate_each turns evaluation errors into ``errors``
                for path, message in errors.items():
                    blocked.discard(path)
                    unsettled.discard(path)
                    failed.add(path)
                    self._finish(path, actions[path], "failed", f"its inputs could not be evaluated: {message}")
                for path in asked:
                    resource = answer.get(path)
                    if resource is None:
                        continue
                    desired[path] = resource
                    self.reevaluated.add(path)
                    seen.setdefault(path, set()).update(resource.reads | resource.blocked_by)
                    if resource.ready:
                        blocked.discard(path)
                        ready.add(path)
                    else:
                        wait_for(path)
                continue
            path, action = running.pop(future)
            unsettled.discard(path)
            if self._settle(future, path, action):
                settled(path)
            else:
                failed.add(path)
        self._unblock(blocked | ready, failed, desired, deps_of, actions)

    def _unblock(
        self,
        pending: set[str],
        failed: set[str],
        desired: Mapping[str, DesiredResource],
        deps_of: Callable[[str], frozenset[str]],
        actions: Mapping[str, Action],
    ) -> None:
        """Report every resource that could not run: skipped after a failure, or on a dependency cycle."""
        if not pending:
            return
        edges = {p: {d for d in deps_of(p) if d in pending or d in failed} for p in pending}
        cycle = find_cycle({p: {d for d in e if d in pending} for p, e in edges.items()})
        on_cycle = set(cycle or ())
        if cycle:
            message = f"dependency cycle: {describe_cycle(cycle)}; break it by removing one of these reads"
            for path in cycle:
                self._finish(path, actions[path], "failed", message)
        for path in sorted(pending - on_cycle):
            upstream = closure(edges[path], edges) & (failed | on_cycle)
            why = ", ".join(sorted(upstream)) if upstream else "resources that could not be applied"
            self._finish(path, actions[path], "skipped", f"skipped: it reads outputs of {why}, which failed")

    def _delete(self, plan: Plan, pool: ThreadPoolExecutor) -> None:
        """Deletes, each after every resource recorded as reading it is gone, and (for a resource that anything
        reads) after every resource to delete that stands above it in the order of operations: a read that left
        no trace is ordered by rank (see docs/decisions.md, "Dependency edges")."""
        doomed = {c.path: c for c in plan.changes if c.action is Action.DELETE}
        if not doomed:
            return
        readers: dict[str, set[str]] = {p: set() for p in doomed}
        read = {p for p in doomed if self.state[p].read}  # doomed resources that some resource was seen reading
        for reader, resource in self.state.items():
            for source in resource.dependencies:
                if source in readers and source != reader:
                    readers[source].add(reader)
                    read.add(source)
        cycle = find_cycle({p: readers[p] & doomed.keys() for p in doomed})
        if cycle:
            message = f"dependency cycle in state: {describe_cycle(cycle)}; delete these by hand and remove them"
            for path in cycle:
                self._finish(path, Action.DELETE, "failed", message)
                del doomed[path]
        rank = _effective_ranks({p: c.before for p, c in doomed.items() if c.before is not None})
        unfinished = Counter(rank.values())  # ranks of the deletes not done yet (a failed one stays)
        tops = [-r for r in unfinished]
        heapq.heapify(tops)

        def top() -> int:
            while tops and not unfinished[-tops[0]]:
                heapq.heappop(tops)
            return -tops[0] if tops else 0

        running = self._running
        waiting = {p for p in doomed if readers[p] or (p in read and top() > rank[p])}
        gated = sorted((p for p in doomed if p in read), key=lambda p: -rank[p])  # by rank, highest first
        startable = set(doomed) - waiting
        while True:
            for path in sorted(startable):
                running[self._submit(pool, doomed[path], None, frozenset())] = (path, Action.DELETE)
            startable.clear()
            if not running:
                break
            future = self._next_done()
            path, _ = running.pop(future)
            if not self._settle(future, path, Action.DELETE):
                continue
            unfinished[rank[path]] -= 1
            gone = doomed[path].before
            assert gone is not None
            woken = {s for s in gone.dependencies if s in waiting}
            for source in woken:
                readers[source].discard(path)
            ceiling = top()
            while gated and rank[gated[0]] >= ceiling:  # nothing above them is left
                woken.add(gated.pop(0))
            for source in woken:
                if source in waiting and not readers[source] and not (source in read and top() > rank[source]):
                    waiting.discard(source)
                    startable.add(source)
        for path in sorted(waiting):
            if readers[path]:
                why = f"still read by {', '.join(sorted(readers[path]))}, which remain"
            else:
                above = sorted(p for p in doomed if rank[p] > rank[path] and p in self.state)
                why = f"{', '.join(above[:5])} could not be deleted, and may read it (applied after it)"
            self._finish(path, Action.DELETE, "skipped", f"not deleted: {why}")


def _effective_ranks(records: Mapping[str, ResourceState]) -> dict[str, int]:
    """Each record's rank, raised where needed so that a reader ranks above every source it is recorded as
    reading (records older than ranks are all 0): the order by rank then never contradicts an edge."""
    ranks: dict[str, int] = {}
    for root in records:
        if root in ranks:
            continue
        stack, visiting = [root], {root}  # iterative depth-first: deep chains do not hit the recursion limit
        while stack:
            node = stack[-1]
            pending = [s for s in records[node].dependencies if s in records and s not in ranks and s not in visiting]
            if pending:
                stack.append(pending[0])
                visiting.add(pending[0])
                continue
            stack.pop()
            visiting.discard(node)
            above = [ranks[s] + 1 for s in records[node].dependencies if s in ranks and s != node]
            ranks[node] = max([records[node].rank, *above])
    return ranks
