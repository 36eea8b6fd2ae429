"""Recovery: fold an interrupted run's journal into state, and settle the operations that were in flight.

An operation with a result in the journal is simply recorded. One without (the controller died while the
provider worked) is settled: first its provider process is allowed to finish (it is in its own session and
answers to nobody), then the provider is asked with ``readResourceRequest`` whether the resource exists as
intended; if it cannot tell, the operation is repeated (providers are asked to make operations idempotent).
Each settlement is reported, so nothing is silently duplicated or forgotten.

A repeated delete that the provider *fails* (``errorResponse``, or it ends by itself without answering) is
settled as failed: the resource stays in state, and the failure is reported. A create or update whose repeat
fails stays unsettled (the original may have happened). An operation that cannot be settled is kept in the
journal and holds back only its own resource and the resources that read it (``held_back``); the rest of the
run goes on. ``nixgitops state rm PATH`` forgets it when the resource is known to be gone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from controller import protocol
from controller.errors import ProviderError, SecretsError
from controller.graph import invert
from controller.journal import Journal
from controller.model import ProviderSpec, ResourceState
from controller.provider_client import Providers
from controller.sealing import scratch_wrap
from controller.sensitive import Unavailable, Wrap, mark_outputs, redact


def _wait_gone(pid: int, deadline: float) -> None:
    while pid > 0 and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        try:  # our own child would be a zombie until reaped; an orphan is reaped by init
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)


def _settle(intent: dict[str, Any], providers: Providers, state: dict[str, ResourceState], wrap: Wrap) -> str:
    path: str = intent["path"]
    message: dict[str, Any] = intent["message"]
    kind = protocol.kind_of(message)
    name = intent["provider"]["name"]
    what = f"{kind} for {path!r} (interrupted)"
    if kind == protocol.DESTROY:
        try:
            providers.call(name, message, what=what)
        except ProviderError as exc:
            if exc.fatal:
                raise
            return (
                f"{path}: a delete was in flight; repeating it FAILED, so the resource stays in state (the next plan"
                f" deletes it again; `nixgitops state rm {path}` forgets it if it is known to be gone): {exc}"
            )
        state.pop(path, None)
        return f"{path}: a delete was in flight; it was repeated and the resource is gone"
    record = ResourceState.from_json(intent["record"])
    body = message[kind]
    old_outputs = body.get("resource", {}).get("outputProperties") if kind == protocol.UPDATE else None
    resource = {"type": record.resource_type, "inputProperties": dict(record.inputs)}
    if old_outputs is not None:
        resource["outputProperties"] = old_outputs
    hide = record.sensitive_outputs
    try:
        asked = {protocol.READ: {"resource": resource}}
        answer = providers.call(name, asked, what=f"readResourceRequest for {path!r}", hide=hide)
        how = "the provider reports it done (read)"
        if answer.get("inSync") is False:
            answer = providers.call(name, message, what=what, hide=hide)
            how = "the provider reports it not done (read), so it was repeated"
    except ProviderError:
        answer = providers.call(name, message, what=what, hide=hide)
        how = "the provider could not tell, so it was repeated"
    outputs = mark_outputs(dict(answer["outputProperties"]), record.sensitive_outputs, wrap)
    state[path] = ResourceState.from_json({**record.to_json(), "outputs": outputs})
    return f"{path}: a {kind} was in flight when the controller stopped; {how}"


def recover(
    journal: Journal,
    state: dict[str, ResourceState],
    *,
    timeout: float,
    make_providers: Callable[[dict[str, ProviderSpec]], Providers] | None = None,
    revive: Callable[[Any], Any] = lambda entry: entry,
    wrap: Wrap = scratch_wrap,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Fold ``journal`` into ``state`` (in place). Returns one note per operation that was in flight, and the
    intents that could not be settled (to keep in the journal for the next run). ``revive`` turns the sealed
    values the journal holds back into sensitive ones (``Sealer.revive``); ``wrap`` makes outputs sensitive."""
    entries = journal.entries()
    notes: list[str] = []
    committed = dict(state)
    for entry in entries:
        if entry.get("kind") != "result":
            continue
        if entry["state"] is None:
            state.pop(entry["path"], None)
        else:
            done = ResourceState.from_json(revive(entry["state"]))
            current = committed.get(entry["path"])
            # the state commit may already hold this very record, with its edges read again after the run (also
            # after a replace, whose delete result came first)
            if (
                current is not None
                and replace(current, dependencies=done.dependencies, rank=done.rank, read=done.read) == done
            ):
                state[entry["path"]] = current
            else:
                state[entry["path"]] = done
    pending = [revive(intent) for intent in journal.unresolved()]
    unsettled: list[dict[str, Any]] = []
    if not pending:
        return notes, unsettled
    specs = {
        i["provider"]["name"]: ProviderSpec(
            i["provider"]["name"], i["provider"]["executable"], tuple(i["provider"]["args"]), frozenset()
        )
        for i in pending
    }
    factory = make_providers or (lambda s: Providers(s, size=1, timeout=timeout))
    with factory(specs) as providers:
        for intent in pending:
            _wait_gone(int(intent.get("pid", 0)) or -1, time.monotonic() + timeout)
            try:
                notes.append(_settle(intent, providers, state, wrap))
            except (ProviderError, SecretsError, Unavailable) as exc:
                unsettled.append({**intent, "pid": 0, "error": redact(str(exc))})  # its process is gone or given up on
                notes.append(f"{intent['path']}: an interrupted operation could not be settled yet: {redact(str(exc))}")
    return notes, unsettled


def held_back(
    unsettled: Mapping[str, str],
    changing: Iterable[str],
    edges: Mapping[str, Iterable[str]],
    deleting: Iterable[str] = (),
) -> dict[str, str]:
    """What operations that are not settled hold back, with why: each unsettled path, every resource to create,
    update or replace that reads one of them (through ``edges``, reader -> sources, following readers that
    change), and each resource to delete that one of them reads. Pure: no I/O.

    ``unsettled`` maps each path to what to say of it; ``changing``: the paths the plan creates, updates or
    replaces; ``edges``: every known reader -> sources edge (state records' ``dependencies``, evaluation's, the
    unsettled operations' own records); ``deleting``: the paths the plan deletes. A reader's delete is not held
    back: it reads nothing.
    """
    moving = set(changing)
    readers = invert(edges)
    held = dict(unsettled)
    todo = list(unsettled)
    roots: dict[str, set[str]] = {p: {p} for p in unsettled}
    while todo:
        source = todo.pop()
        for reader in sorted(readers.get(source, ())):
            if reader in unsettled or reader not in moving:
                continue
            known = roots.setdefault(reader, set())
            if not roots[source] <= known:
                known |= roots[source]
                todo.append(reader)  # again, so what it adds reaches its own readers
    for path in sorted(roots.keys() - unsettled.keys()):
        names = ", ".join(sorted(roots[path]))
        held[path] = f"skipped: it reads {names}, whose last operation is not settled; it runs once that one is"
    for path in sorted(set(deleting) - held.keys()):
        owners = sorted(p for p in unsettled if path in set(edges.get(p, ())))
        if owners:
            held[path] = f"not deleted: {', '.join(owners)} reads it, and its last operation is not settled"
    return held
