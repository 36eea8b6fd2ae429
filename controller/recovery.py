"""Recovery: fold an interrupted run's journal into state, and settle the operations that were in flight.

An operation with a result in the journal is simply recorded. One without (the controller died while the
provider worked) is settled: first its provider process is allowed to finish (it is in its own session and
answers to nobody), then the provider is asked with ``readResourceRequest`` whether the resource exists as
intended; if it cannot tell, the operation is repeated (providers are asked to make operations idempotent).
Each settlement is reported, so nothing is silently duplicated or forgotten.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from controller import protocol
from controller.errors import ProviderError
from controller.journal import Journal
from controller.model import ProviderSpec, ResourceState
from controller.provider_client import Providers


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


def _settle(intent: dict[str, Any], providers: Providers, state: dict[str, ResourceState]) -> str:
    path: str = intent["path"]
    message: dict[str, Any] = intent["message"]
    kind = protocol.kind_of(message)
    name = intent["provider"]["name"]
    what = f"{kind} for {path!r} (interrupted)"
    if kind == protocol.DESTROY:
        providers.call(name, message, what=what)
        state.pop(path, None)
        return f"{path}: a delete was in flight; it was repeated and the resource is gone"
    record = ResourceState.from_json(intent["record"])
    body = message[kind]
    old_outputs = body.get("resource", {}).get("outputProperties") if kind == protocol.UPDATE else None
    resource = {"type": record.resource_type, "inputProperties": dict(record.inputs)}
    if old_outputs is not None:
        resource["outputProperties"] = old_outputs
    try:
        answer = providers.call(name, {protocol.READ: {"resource": resource}}, what=f"readResourceRequest for {path!r}")
        how = "the provider reports it done (read)"
        if answer.get("inSync") is False:
            answer = providers.call(name, message, what=what)
            how = "the provider reports it not done (read), so it was repeated"
    except ProviderError:
        answer = providers.call(name, message, what=what)
        how = "the provider could not tell, so it was repeated"
    state[path] = ResourceState.from_json({**record.to_json(), "outputs": answer["outputProperties"]})
    return f"{path}: a {kind} was in flight when the controller stopped; {how}"


def recover(
    journal: Journal,
    state: dict[str, ResourceState],
    *,
    timeout: float,
    make_providers: Callable[[dict[str, ProviderSpec]], Providers] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Fold ``journal`` into ``state`` (in place). Returns one note per operation that was in flight, and the
    intents that could not be settled (to keep in the journal for the next run)."""
    entries = journal.entries()
    notes: list[str] = []
    for entry in entries:
        if entry.get("kind") != "result":
            continue
        if entry["state"] is None:
            state.pop(entry["path"], None)
        else:
            state[entry["path"]] = ResourceState.from_json(entry["state"])
    pending = journal.unresolved()
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
                notes.append(_settle(intent, providers, state))
            except ProviderError as exc:
                unsettled.append(intent)
                notes.append(f"{intent['path']}: an interrupted operation could not be settled yet: {exc}")
    return notes, unsettled
