"""The engine: evaluate, plan and apply one deployment against its state branch.

``compute_plan`` runs evaluation passes until the set of resources whose outputs will change is stable:
the first pass treats every recorded output as known; each later pass makes the outputs of the resources
that will change unknown, so that their readers show ``(known after apply)``. A deployment that did not
change is planned in a single pass. ``Engine`` adds the repository, the state branch and the providers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pygit2

from controller import failpoints, flakes, paths, planning
from controller.apply import Event, Executor, Outcome, now
from controller.builds import Builder, GcRoots, missing
from controller.errors import DeploymentError, NixgitopsError
from controller.evaluation import Evaluation, NixEvaluator
from controller.graph import closure, describe_cycle, find_cycle, invert
from controller.journal import Journal, read_entries, unresolved
from controller.model import DesiredResource, EvalLimits, NixSettings, ProviderSpec, ResourceState
from controller.planning import Action, Change, Plan
from controller.provider_client import Providers
from controller.recovery import held_back, recover
from controller.sealing import RECIPIENTS_FILE, Encryption, Sealer, read_recipients_file
from controller.sensitive import redact
from controller.state_branch import (
    DEFAULT_BRANCH,
    DEFAULT_IDENTITY,
    StateBranch,
    has_uncommitted_changes,
    open_repository,
    source_commit,
)

_MOVING = frozenset((Action.CREATE, Action.UPDATE, Action.REPLACE))


class Evaluator(Protocol):
    def evaluate(self, known: Mapping[str, Mapping[str, Any]], *, select: set[str] | None = None) -> Evaluation: ...


@dataclass(frozen=True)
class Planned:
    """A plan and what it was computed from."""

    plan: Plan
    desired: dict[str, DesiredResource]
    dependencies: dict[str, frozenset[str]]
    providers: dict[str, ProviderSpec]
    state: dict[str, ResourceState]
    passes: int
    held: Mapping[str, str] = field(default_factory=dict)
    """Paths left out of ``plan`` because an operation that is not settled holds them back, each with why and
    what to do (see ``Engine.plan``); reported as skipped."""
    refresh: Mapping[str, ResourceState] = field(default_factory=dict)
    """Records of unchanged resources to write again, without provider call: new edges, the mark of being read
    (``planning.refreshed``). An apply writes them even when the plan has no change."""
    outside: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The outputs of resources outside the deployed member (other deployments on a shared state branch):
    readable, never changed."""


def check_providers(plan: Plan, providers: Mapping[str, ProviderSpec], entry: str) -> None:
    """Refuse a plan that must call a provider the deployment no longer declares."""

    def calls(c: Change) -> bool:  # (deleting a stateless resource calls no provider)
        return c.action is not Action.NOOP and not (c.action is Action.DELETE and c.before and c.before.stateless)

    orphans = sorted(f"  - {c.path} ({c.type})" for c in plan.changes if calls(c) and c.provider not in providers)
    if orphans:
        names = sorted({c.provider for c in plan.changes if calls(c) and c.provider not in providers})
        raise DeploymentError(
            "These resources need a provider that the deployment no longer declares:\n"
            + "\n".join(orphans)
            + f"\nKeep providers.{names[0]} declared in {entry} until its resources are deleted."
        )


def compute_plan(
    evaluator: Evaluator,
    state: Mapping[str, ResourceState],
    *,
    destroy: bool = False,
    entry: str = "deployment.nix",
    allow_empty: bool = False,
    source_commit: str | None = None,
    member: str | None = None,
    made: Collection[str] = (),
    recorded: Mapping[str, Any] | None = None,
    outside: Mapping[str, Mapping[str, Any]] | None = None,
) -> Planned:
    """Evaluate until stable and plan; raises for cycles and for plans that destroy protected resources.

    Without ``allow_empty``, a deployment that declares nothing while state holds resources is refused
    (``EmptyDeploymentError``, naming ``entry`` and ``source_commit``); ``destroy`` is always allowed.
    ``member``: plan only the resources under this member path (the evaluator evaluates only those); what state
    holds elsewhere is neither changed nor deleted, and its outputs stay readable. ``made``: see
    ``planning.plan``."""
    state = dict(state)
    scoped = state if member is None else {p: s for p, s in state.items() if paths.within(p, member)}
    if destroy:
        answer = evaluator.evaluate({}, select=set())
        plan = planning.plan({}, scoped, destroy=True)
        planning.check_protected(plan, entry)
        check_providers(plan, answer.providers, entry)
        return Planned(plan, {}, {}, answer.providers, state, 1)
    unknown: frozenset[str] = frozenset()
    passes = 0
    predicted = False
    reorder: dict[str, str] | None = None
    while True:
        passes += 1
        known = {**(outside or {}), **{p: dict(s.outputs) for p, s in state.items() if p not in unknown}}
        answer = evaluator.evaluate(known)
        if reorder is None:  # from the first pass, where every recorded output is known
            reorder = planning.out_of_order(answer.resources, state)
        plan = planning.plan(answer.resources, scoped, reorder=reorder, structural=answer.structural, made=made)
        moving = planning.changing(plan)
        if moving == unknown:
            break
        if moving < unknown:
            unknown = moving  # predicted too much; shrinking converges (see docs/decisions.md)
        elif not predicted:
            # The readers of what changes will wait for it too: one pass instead of one per level.
            predicted = True
            edges = {p: s.dependencies for p, s in state.items()} | answer.dependencies
            unknown = frozenset(closure(unknown | moving, invert(edges)) & answer.resources.keys())
        else:
            unknown = unknown | moving
    dependencies = answer.dependencies
    _check_state_handlers(answer, {*state, *(outside or {})}, entry, member)
    # Every edge is a read that happened, so a cycle found here is a real one (see docs/decisions.md).
    resources = answer.resources  # (a resource that waits for its own outputs is a cycle of one)
    cycle = find_cycle({p: (dependencies[p] | resources[p].blocked_by) & unknown for p in unknown if p in resources})
    if cycle:
        raise DeploymentError(
            f"The resources in {entry} read each other's outputs in a cycle: {describe_cycle(cycle)}."
            " No order can apply them; remove one of these reads."
        )
    planning.check_protected(plan, entry)
    providers = answer.providers
    if answer.root and recorded:  # a root names no provider its resources do not use: deletes use the recorded
        providers = _recorded_providers(plan, providers, recorded, scoped)
    check_providers(plan, providers, entry)
    # last: the refusals above are not lifted by allow_empty, so they are reported first
    planning.check_empty_deployment(
        plan, answer.resources, entry, commit=source_commit, allow=allow_empty or bool(answer.structural)
    )
    refresh = planning.refreshed(plan, answer.resources, state)
    return Planned(
        plan, answer.resources, dependencies, providers, state, passes, refresh=refresh, outside=dict(outside or {})
    )


def _check_state_handlers(answer: Evaluation, recorded: Collection[str], entry: str, member: str | None) -> None:
    """Refuse a `state` reference that names no resource (a composite, or nothing), as NixOps4 does; nixgitops keeps
    the state itself, but such a reference is a mistake in the deployment. (Outside ``member``, nothing was
    evaluated: a reference there is not judged.)"""
    for path, resource in sorted(answer.resources.items()):
        handler = resource.state_handler
        if handler is None or handler in answer.resources or handler in recorded:
            continue
        if any(paths.within(handler, s) for s in answer.structural):
            continue  # known after apply
        if member is not None and not paths.within(handler, member):
            continue
        under = sorted(p for p in answer.resources if paths.within(p, handler))
        what = "a composite, not a resource" if under else "no resource of the deployment"
        raise DeploymentError(
            f"Invalid state reference in {entry}: resource {path!r} keeps its state in {handler!r}, which is {what}."
            " Name the resource that keeps its state (state = members.x;), or leave `state` out."
        )


def _recorded_providers(
    plan: Plan,
    providers: Mapping[str, ProviderSpec],
    recorded: Mapping[str, Any],
    state: Mapping[str, ResourceState],
) -> dict[str, ProviderSpec]:
    """``providers`` with, for each provider that a delete needs and that no resource names any more, the command
    recorded at the last apply (a NixOps4 root has no list of providers of its own)."""
    found = dict(providers)
    for change in plan.changes:
        name = change.provider
        command = recorded.get(name)
        if change.action is not Action.DELETE or name in found or not isinstance(command, Mapping):
            continue
        types = frozenset(r.resource_type for r in state.values() if r.provider == name)
        found[name] = ProviderSpec(name, str(command["executable"]), tuple(command.get("args") or ()), types)
    return found


def _mark_read(
    state: dict[str, ResourceState],
    desired: Mapping[str, DesiredResource],
    seen: Mapping[str, set[str]],
) -> None:
    """Mark every resource that was seen read in this run (the mark is never cleared): a reader whose read left
    no edge orders its delete by rank only against resources so marked."""
    observed: set[str] = set()
    for resource in desired.values():
        observed |= resource.reads
    for reads in seen.values():
        observed |= reads
    for record in state.values():
        observed.update(record.dependencies)
    for path in observed:
        found = state.get(path)
        if found is not None and not found.read:
            state[path] = replace(found, read=True)


STRUCTURE_ROUNDS = 10
"""Applies in one run at most, each after the structure that outputs decide became known (NixOps4's structural
dependencies): the plan, the apply, then a plan of what the applied outputs revealed."""


@dataclass(frozen=True)
class Settings:
    """Where a deployment lives and how to run it (the command line fills these in)."""

    directory: Path = Path(".")
    entry: str = "deployment.nix"
    deployment: str = "default"
    state_branch: str = DEFAULT_BRANCH
    parallelism: int = 8
    provider_timeout: float = 300.0
    show_trace: bool = False
    identity: tuple[str, str] = DEFAULT_IDENTITY
    evaluation: EvalLimits = field(default_factory=EvalLimits)
    nix: NixSettings = field(default_factory=NixSettings)
    flake: str | None = None
    """``REF#ATTR``: evaluate that flake output (REF relative to ``directory``) instead of ``entry``."""
    member: str | None = None
    """A member path (``controller.paths``): plan, apply and destroy only the resources under it."""
    encryption: Encryption = field(default_factory=Encryption)
    """Who sensitive values are encrypted to in state, and the identities that decrypt them (docs/secrets.md)."""


@dataclass
class RunResult:
    """What an apply did."""

    outcomes: dict[str, Outcome]
    commit: str | None
    counts: dict[str, int] = field(default_factory=dict)
    commit_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(o.status == "ok" for o in self.outcomes.values())


def _counts(outcomes: Mapping[str, Outcome]) -> dict[str, int]:
    counts = {a.value: 0 for a in Action if a is not Action.NOOP}
    counts.update(failed=0, skipped=0)
    for o in outcomes.values():
        if o.status == "ok" and o.action is not Action.NOOP:
            counts[o.action.value] += 1
        elif o.status != "ok":
            counts[o.status] += 1
    return counts


class Engine:
    """One deployment: its evaluator, its state branch, its providers and its journal."""

    def __init__(
        self,
        settings: Settings,
        *,
        repo: pygit2.Repository,
        entry_file: Path,
        source_commit: str | None,
        journal: Path,
        dirty: bool = False,
        workdir: Path | None = None,
        log: Callable[[str], None] | None = None,
        source_root: Path | None = None,
        roots: Path | None = None,
    ) -> None:
        """``source_root``: the root of the source tree, which a restricted evaluation may read (default: the
        entry file's directory). ``roots``: the directory of the garbage-collector roots of what the state
        refers to (default: next to the journal)."""
        self.settings = settings
        self.workdir = workdir or entry_file.parent
        self.entry_file = entry_file
        self.repo = repo
        self.source_commit = source_commit
        self.dirty = dirty
        self.sealer = Sealer.beside(journal, settings.encryption, meta=lambda: self.store.load_meta())
        self.store = StateBranch(
            repo,
            branch=settings.state_branch,
            deployment=settings.deployment,
            identity=settings.identity,
            sealer=self.sealer,
        )
        self.journal_path = journal
        self.roots = GcRoots(roots or journal.with_suffix(".gcroots"), settings.nix, log=log)
        self.evaluator = NixEvaluator(
            entry_file,
            source=source_commit,
            show_trace=settings.show_trace,
            log=log,
            limits=settings.evaluation,
            root=source_root,
            nix=settings.nix,
            flake=flakes.locate(settings.flake, settings.directory) if settings.flake is not None else None,
            member=settings.member,
        )
        self.evaluator.wrap = self.sealer.wrap
        self.log = log

    @classmethod
    def for_checkout(cls, settings: Settings, *, log: Callable[[str], None] | None = None) -> Engine:
        """The deployment in a Git checkout, as the command line uses it (state on a local branch)."""
        entry = Path(settings.entry)
        entry_file = entry if entry.is_absolute() else (settings.directory / entry)
        if settings.flake is not None:
            found = flakes.locate(settings.flake, settings.directory).directory
            entry_file = (found or settings.directory) / "flake.nix"
        repo = open_repository(entry_file.parent if entry_file.parent.exists() else settings.directory)
        recipients = Path(repo.workdir or settings.directory) / RECIPIENTS_FILE
        if not settings.encryption.recipients and recipients.is_file():  # (a file there asks for encryption: enforced)
            listed = read_recipients_file(recipients)
            encryption = replace(settings.encryption, recipients=listed, where=str(recipients), enforced=True)
            settings = replace(settings, encryption=encryption)
        return cls(
            settings,
            repo=repo,
            entry_file=entry_file,
            source_commit=source_commit(repo),
            journal=Path(repo.path) / "nixgitops" / f"{settings.deployment}.journal",
            dirty=has_uncommitted_changes(repo),
            log=log,
            source_root=Path(repo.workdir) if repo.workdir else None,
        )

    def load_state(self) -> dict[str, ResourceState]:
        return self.store.load()

    def pending_recovery(self) -> bool:
        return self.journal_path.exists() and self.journal_path.stat().st_size > 0

    def recover(self) -> list[str]:
        """Fold an interrupted run's journal into the state branch; one note per operation that was in flight."""
        if not self.pending_recovery():
            return []
        journal = Journal(self.journal_path, default=self.sealer.store)
        try:
            before = self.load_state()
            after = dict(before)
            notes, unsettled = recover(
                journal,
                after,
                timeout=self.settings.provider_timeout,
                make_providers=lambda specs: Providers(
                    specs, size=1, timeout=self.settings.provider_timeout, cwd=str(self.workdir), log=self.log
                ),
                revive=self.sealer.revive,
                wrap=self.sealer.wrap,
            )
            upserts = {p: s for p, s in after.items() if before.get(p) != s}
            deletes = set(before) - set(after)
            if upserts or deletes:
                message = "\n".join(
                    [
                        f"Recover an interrupted run: {len(upserts)} recorded, {len(deletes)} removed",
                        "",
                        *notes,
                        "",
                    ]
                )
                self.store.commit(upserts=upserts, deletes=deletes, meta=self.store.load_meta(), message=message)
            journal.clear(keep=unsettled)  # they hold back their resources and readers (see ``plan``)
            return notes
        finally:
            journal.close()

    def unsettled(self) -> dict[str, str]:
        """The paths whose last operation is not settled (the journal holds it with no outcome), each with what
        to say: why, and what to do."""
        found: dict[str, str] = {}
        for intent in unresolved(read_entries(self.journal_path)):
            path, provider = intent["path"], intent["provider"]["name"]
            kind = next(iter(intent["message"]), "request")
            error = str(intent.get("error") or "").strip()
            if not error:
                found[path] = (
                    f"skipped: a {kind} of an interrupted run is not settled yet; the next apply (or controller run)"
                    " settles it first"
                )
                continue
            found[path] = (
                f"skipped: its last operation, a {kind}, could not be settled ({error.splitlines()[0]}) Make"
                f" provider {provider!r} reachable and run again; if the resource is known to be gone, run"
                f" `nixgitops state rm {path}`."
            )
        return found

    def hold_back(self, planned: Planned, unsettled: Mapping[str, str]) -> Planned:
        """``planned`` without the resources that operations that are not settled hold back (their own paths,
        their changing readers, what they read that would be deleted), which go to ``Planned.held``."""
        if not unsettled:
            return planned
        edges: dict[str, set[str]] = {}
        for path, record in planned.state.items():
            edges.setdefault(path, set()).update(record.dependencies)
        for path, sources in planned.dependencies.items():
            edges.setdefault(path, set()).update(sources)
        for path, desired in planned.desired.items():
            edges.setdefault(path, set()).update(desired.blocked_by | desired.reads)
        for intent in unresolved(read_entries(self.journal_path)):
            journaled = intent.get("record") or {}
            edges.setdefault(intent["path"], set()).update(journaled.get("dependencies") or ())
        moving = {Action.CREATE, Action.UPDATE, Action.REPLACE}
        held = held_back(
            unsettled,
            [c.path for c in planned.plan.changes if c.action in moving],
            edges,
            [c.path for c in planned.plan.changes if c.action is Action.DELETE],
        )
        plan = replace(planned.plan, changes=tuple(c for c in planned.plan.changes if c.path not in held))
        return replace(planned, plan=plan, held={**planned.held, **held})

    def plan(
        self,
        *,
        destroy: bool = False,
        allow_empty: bool = False,
        exclude: Mapping[str, str] | None = None,
        made: Collection[str] = (),
    ) -> Planned:
        """The plan against the state branch; ``allow_empty`` lets a deployment that declares nothing delete
        everything in state (see ``planning.check_empty_deployment``).

        ``exclude`` (path -> why; default: ``unsettled()``, the journal's operations that are not settled) and
        what they hold back are left out of the plan and listed in ``Planned.held``, so a run never plans over an
        operation whose outcome is unknown, and still does everything else."""
        self.sealer.check()  # (bad recipients, or encryption enforced without any: refused before anything runs)
        state = self.load_state()
        if not destroy:  # (sensitive values digested elsewhere cannot be compared here; deleting compares nothing)
            self.sealer.check_digests()
        planned = compute_plan(
            self.evaluator,
            state,
            destroy=destroy,
            entry=str(self.entry_file),
            allow_empty=allow_empty,
            source_commit=None if self.dirty else self.source_commit,  # a dirty tree is not that commit
            member=self.settings.member,
            made=made,
            recorded=self.store.load_meta().get("providers"),
            outside=self._outside(),
        )
        planned = self.hold_back(planned, self.unsettled() if exclude is None else exclude)
        recorded = self.store.load_meta().get("providers")
        if isinstance(recorded, Mapping) and planned.providers:
            changed = planning.provider_changes(recorded, planned.providers)
            planned = replace(planned, plan=replace(planned.plan, providers=changed))
        return planned

    def _outside(self) -> dict[str, Mapping[str, Any]]:
        """With a member: the outputs recorded outside it, by this deployment and by the others on its state branch
        (deployments of other members of the same repository)."""
        member = self.settings.member
        if member is None:
            return {}
        records = {**self.store.others(), **self.load_state()}
        return {p: r.outputs for p, r in records.items() if not paths.within(p, member)}

    def _prepare(
        self, builder: Builder, providers: Mapping[str, ProviderSpec], executor: Executor
    ) -> Callable[[str, DesiredResource | None], tuple[str, ...]]:
        """What the executor calls before a provider call: build what the provider and the resource refer to."""

        lock = threading.Lock()  # one writable pass at a time (operations run in parallel)

        def prepare(provider: str, desired: DesiredResource | None) -> tuple[str, ...]:
            spec = providers.get(provider)
            paths: tuple[str, ...] = ()
            if spec is not None and spec.needs:
                with lock:
                    if missing(spec.needs):
                        self.evaluator.evaluate({}, select=set(), writable=True)
                paths += builder.realise(spec.needs, what=f"provider {provider!r}")
            if desired is not None and desired.needs:
                with lock:
                    if missing(desired.needs):  # it became ready in a pass that wrote no derivation
                        known = {**executor.outside, **{p: s.outputs for p, s in dict(executor.state).items()}}
                        self.evaluator.evaluate(known, select={desired.path}, writable=True)
                paths += builder.realise(desired.needs, what=f"resource {desired.path!r}")
            return paths

        return prepare

    def build_providers(self, providers: Mapping[str, ProviderSpec]) -> None:
        """Build what ``providers`` refer to, outside an apply (a drift check starts them). Raises
        ``BuildError`` or ``EvaluationError``."""
        needed = {n for spec in providers.values() for n in spec.needs}
        if not needed:
            return
        if missing(needed):
            self.evaluator.evaluate({}, select=set(), writable=True)
        builder = Builder(self.settings.nix, self.roots, log=self.log)
        for name, spec in sorted(providers.items()):
            builder.realise(spec.needs, what=f"provider {name!r}")

    def _instantiate(self, planned: Planned) -> None:
        """Write to the store the derivations the plan's resources and providers refer to: the plan's evaluation
        computed their paths without writing them (see ``builds.missing``). One pass for all."""
        moving = {c.path for c in planned.plan.changes if c.action in _MOVING}
        select = {p for p in moving if planned.desired[p].ready and missing(planned.desired[p].needs)}
        needed = {n for spec in planned.providers.values() for n in spec.needs}
        if not select and not missing(needed):
            return
        known = {**planned.outside, **{p: s.outputs for p, s in planned.state.items() if p not in moving}}
        self.evaluator.evaluate(known, select=select, writable=True)

    def apply(self, planned: Planned, *, report: Callable[[Event], None] = lambda e: None) -> RunResult:
        """Carry out ``planned`` and commit what was done to the state branch, even when some of it failed."""
        self.sealer.check()  # (enforced encryption without recipients: before any provider call)
        builds = any(r.needs for r in planned.desired.values()) or any(s.needs for s in planned.providers.values())
        if builds and planned.plan.changes:
            self._instantiate(planned)
        journal = Journal(self.journal_path, default=self.sealer.store)
        executor = Executor(
            providers=Providers(
                planned.providers,
                size=self.settings.parallelism,
                timeout=self.settings.provider_timeout,
                cwd=str(self.workdir),
                log=self.log,
            ),
            evaluate=lambda known, select: self.evaluator.evaluate(known, select=select),
            parallelism=self.settings.parallelism,
            source_commit=self.source_commit,
            report=report,
            journal=journal,
            base_rank=1 + max((s.rank for s in planned.state.values()), default=0),
            outside=planned.outside,
            wrap=self.sealer.wrap,
        )
        builder = Builder(self.settings.nix, self.roots, log=self.log)
        if builds and planned.plan.changes:  # what is known now, in one Nix command: Nix builds it in parallel
            moving = {c.path for c in planned.plan.changes if c.action in _MOVING}
            needs = {n for p in moving if planned.desired[p].ready for n in planned.desired[p].needs}
            builder.prefetch(needs | {n for spec in planned.providers.values() for n in spec.needs})
        executor.prepare = self._prepare(builder, planned.providers, executor)
        try:
            with executor.providers, self.evaluator.session(writable=builds):
                executor.run(planned.plan, planned.desired, planned.dependencies, planned.state, planned.refresh)
            self._refresh_edges(executor)
            _mark_read(executor.state, planned.desired, executor.reads_seen)
        finally:
            try:
                started = time.monotonic()
                commit = self.commit(planned.state, executor.state, executor.outcomes, providers=planned.providers)
                seconds = time.monotonic() - started
                failpoints.hit("journal-clear")
                journal.clear(keep=journal.unresolved())  # only once the state commit holds what it recorded
                try:
                    self.keep_roots(executor.state)
                except (NixgitopsError, OSError) as exc:  # roots kept for too much: garbage collection frees less
                    if self.log is not None:
                        self.log(f"could not update the garbage-collector roots: {exc}")
            finally:
                journal.close()
        return RunResult(executor.outcomes, commit, _counts(executor.outcomes), seconds)

    def keep_roots(self, state: Mapping[str, ResourceState]) -> None:
        """Keep garbage-collector roots for exactly the store paths ``state`` (as committed) and the journal's
        operations that are not settled refer to."""
        paths = {p for record in state.values() for p in record.store_paths}
        for intent in unresolved(read_entries(self.journal_path)):
            paths.update((intent.get("record") or {}).get("storePaths") or ())
        self.roots.keep(paths)

    def _refresh_edges(self, executor: Executor) -> None:
        """The edges of the resources whose inputs became known during the run, read again in one pass with
        every output final, where string taint finds every output string they kept (passes during the run
        see reads only as traced; see docs/decisions.md, "Dependency edges")."""
        paths = {p for p in executor.reevaluated if p in executor.state and executor.outcomes.get(p, None) is not None}
        paths = {p for p in paths if executor.outcomes[p].status == "ok"}
        if not paths:
            return
        known = {**executor.outside, **{p: s.outputs for p, s in executor.state.items()}}
        try:
            answer = self.evaluator.evaluate(known, select=paths)
        except NixgitopsError as exc:  # the edges seen during the run stand; the order of deletes is kept by rank
            if self.log is not None:
                self.log(f"could not read the dependency edges again after the run: {str(exc).splitlines()[0]}")
            return
        for path in paths:
            resource = answer.resources.get(path)
            if resource is None:
                continue
            edges = (resource.reads | executor.reads_seen.get(path, set())) - {path}
            executor.state[path] = replace(executor.state[path], dependencies=tuple(sorted(edges)))

    def commit(
        self,
        before: Mapping[str, ResourceState],
        after: Mapping[str, ResourceState],
        outcomes: Mapping[str, Outcome],
        *,
        note: str | None = None,
        providers: Mapping[str, ProviderSpec] | None = None,
    ) -> str | None:
        """Commit the resources that changed and the run's summary; nothing when neither the resources nor the
        attempted or applied commit changed. ``providers``: the commands of the providers the run used, recorded
        (``planning.provider_changes``)."""
        upserts = {p: s for p, s in after.items() if before.get(p) != s}
        deletes = set(before) - set(after)
        counts = _counts(outcomes)
        ok = all(o.status == "ok" for o in outcomes.values()) and note is None
        stored = self.store.load_meta()
        meta: dict[str, Any] = dict(stored)
        meta.update(deployment=self.settings.deployment, lastAttemptedCommit=self.source_commit)
        if ok:
            meta["lastAppliedCommit"] = self.source_commit
        if providers is not None:
            meta["providers"] = {n: planning.provider_record(s) for n, s in sorted(providers.items()) if not s.builtin}
        if (sealed_key := self.sealer.meta_entry()) is not None:
            meta["digestKey"] = sealed_key  # (encrypted to the recipients: how another machine finds the key)
        keys = ("lastAttemptedCommit", "lastAppliedCommit", "providers", "digestKey")
        unchanged = all(meta.get(k) == stored.get(k) for k in keys)
        if not upserts and not deletes and unchanged:
            return None
        result = "success" if ok else "failed"
        meta["lastRun"] = {"at": now(), "sourceCommit": self.source_commit, "result": result, "counts": counts}
        if note is not None:
            meta["lastRun"]["message"] = redact(note)
        meta["sourceDirty"] = self.dirty
        source = self.source_commit or "none"
        plus = counts["create"] + counts["replace"]
        minus = counts["delete"] + counts["replace"]
        title = f"Apply {source[:12]}: +{plus} ~{counts['update']} -{minus}"
        if not ok:
            title += f" ({counts['failed']} failed, {counts['skipped']} skipped)" if note is None else f" ({note})"
        body = [
            f"{o.action.value} {o.path}: {o.status}" + (f" ({o.message})" if o.status == "ok" and o.message else "")
            for o in sorted(outcomes.values(), key=lambda o: o.path)
        ]
        message = "\n".join(
            [
                title,
                "",
                *[line for line in body if not line.startswith("noop")],
                "",
                f"Source-Commit: {source}",
                *(["Source-Dirty: true"] if self.dirty else []),
                "",
            ]
        )
        return self.store.commit(upserts=upserts, deletes=deletes, meta=meta, message=message, state=after)
