"""Planning: compare the desired resources with the recorded state and decide what to do.

Pure: data in, data out, no I/O. ``plan(desired, state)`` returns a ``Plan``; a change's ``reason`` explains
the action to people and decides nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from controller import paths
from controller.errors import EmptyDeploymentError, PlanError
from controller.model import ABSENT, UNKNOWN, DesiredResource, ProviderSpec, ResourceState, provider_of


class Action(StrEnum):
    """What a plan does with one resource; the values are also the JSON form."""

    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    NOOP = "noop"


@dataclass(frozen=True)
class FieldChange:
    """One input field that differs: ``before`` and ``after`` are JSON values, ``ABSENT`` or ``UNKNOWN``."""

    field: str
    before: Any
    after: Any


@dataclass(frozen=True)
class Change:
    """What happens to one resource path."""

    path: str
    action: Action
    type: str
    before: ResourceState | None
    after: DesiredResource | None
    fields: tuple[FieldChange, ...]
    reason: str

    @property
    def provider(self) -> str:
        return provider_of(self.type)


@dataclass(frozen=True)
class ProviderChange:
    """A provider whose command changed since the last apply (a rebuilt package: a new store path). Its
    resources are not called for it; each operation from now on runs the new command."""

    name: str
    before: Mapping[str, Any]
    after: Mapping[str, Any]


def provider_changes(recorded: Mapping[str, Any], current: Mapping[str, ProviderSpec]) -> tuple[ProviderChange, ...]:
    """The declared providers whose executable or arguments differ from those ``recorded`` at the last apply."""
    changes = []
    for name in sorted(current):
        spec, old = current[name], recorded.get(name)
        if spec.builtin or not isinstance(old, Mapping):
            continue
        new = provider_record(spec)
        if dict(old) != new:
            changes.append(ProviderChange(name, dict(old), new))
    return tuple(changes)


def provider_record(spec: ProviderSpec) -> dict[str, Any]:
    """What the state branch keeps of a provider: its command."""
    return {"executable": spec.executable, "args": list(spec.args)}


@dataclass(frozen=True)
class Plan:
    """Every resource path with its change, sorted by path."""

    changes: tuple[Change, ...]
    providers: tuple[ProviderChange, ...] = ()
    """Providers whose command changed since the last apply: shown, recorded, nothing called."""
    structural: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Members whose structure (kind, or set of members) is known only after these resources are applied, each
    with them: apply evaluates the structure again once they are (NixOps4's structural dependencies)."""

    def counts(self) -> dict[str, int]:
        result = {action.value: 0 for action in Action}
        for change in self.changes:
            result[change.action.value] += 1
        return result

    @property
    def has_changes(self) -> bool:
        return any(c.action is not Action.NOOP for c in self.changes)

    def by_path(self) -> dict[str, Change]:
        return {c.path: c for c in self.changes}


def diff_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    """The fields whose values differ, sorted by name. An unknown ``after`` always counts as a change."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old = before.get(name, ABSENT)
        new = after.get(name, ABSENT)
        if new is UNKNOWN or old != new or type(old) is not type(new):
            changes.append(FieldChange(name, old, new))
    return tuple(changes)


def decide(desired: DesiredResource, current: ResourceState | None) -> Change:
    """The change that brings one resource from ``current`` to ``desired``."""
    if current is None:
        fields = tuple(FieldChange(k, ABSENT, desired.inputs[k]) for k in sorted(desired.inputs))
        return Change(desired.path, Action.CREATE, desired.type, None, desired, fields, "not in state")
    if current.type != desired.type:
        if current.provider != desired.provider:
            reason = f"provider changed from {current.provider!r} to {desired.provider!r}"
        else:
            reason = f"type changed from {current.type!r} to {desired.type!r}"
        fields = diff_fields(current.inputs, desired.inputs)
        return Change(desired.path, Action.REPLACE, desired.type, current, desired, fields, reason)
    if desired.stateless:  # NixOps4 makes a resource without state again on every apply (docs/nixops4.md)
        if desired.inputs_known:
            fields = diff_fields(current.inputs, desired.inputs)
        else:
            fields = (FieldChange("*", dict(current.inputs), UNKNOWN),)
        reason = "stateless: made again on every apply"
        return Change(desired.path, Action.UPDATE, desired.type, current, desired, fields, reason)
    if not desired.inputs_known:
        fields = (FieldChange("*", dict(current.inputs), UNKNOWN),)
        return Change(desired.path, Action.UPDATE, desired.type, current, desired, fields, "inputs known after apply")
    fields = diff_fields(current.inputs, desired.inputs)
    if not fields and desired.prevent_destroy != current.prevent_destroy:
        reason = (
            f"lifecycle.preventDestroy changes from {str(current.prevent_destroy).lower()} to"
            f" {str(desired.prevent_destroy).lower()}; only state is written"
        )
        return Change(desired.path, Action.UPDATE, desired.type, current, desired, (), reason)
    if not fields and (desired.stateless, desired.state_handler) != (current.stateless, current.state_handler):
        why = "it now keeps state" if current.stateless else "its state handler changed"
        reason = f"{why}; only state is written"
        return Change(desired.path, Action.UPDATE, desired.type, current, desired, (), reason)
    if not fields:
        return Change(desired.path, Action.NOOP, desired.type, current, desired, (), "inputs unchanged")
    if any(f.after is UNKNOWN for f in fields):
        reason = "inputs read outputs known only after apply"
    else:
        reason = "inputs changed: " + ", ".join(f.field for f in fields)
    return Change(desired.path, Action.UPDATE, desired.type, current, desired, fields, reason)


def delete(current: ResourceState, reason: str = "not in the deployment any more") -> Change:
    """The change that deletes a resource recorded in state."""
    fields = tuple(FieldChange(k, current.inputs[k], ABSENT) for k in sorted(current.inputs))
    return Change(current.path, Action.DELETE, current.type, current, None, fields, reason)


def plan(
    desired: Mapping[str, DesiredResource],
    state: Mapping[str, ResourceState],
    *,
    destroy: bool = False,
    reorder: Mapping[str, str] | None = None,
    structural: Mapping[str, Collection[str]] | None = None,
    made: Collection[str] = (),
) -> Plan:
    """Plan the changes from ``state`` to ``desired``; with ``destroy``, plan deleting everything in state.
    ``reorder`` names unchanged resources that must be recorded again in the order of operations (see
    ``out_of_order``), with the reason: they are planned as updates that call no provider. ``structural``: the
    members whose structure is not known yet (with what they wait for); what state holds under them is kept
    until it is. ``made``: stateless resources already made again in this apply (an earlier round), left alone
    when their inputs are unchanged."""
    changes: list[Change] = []
    if destroy:
        changes = [delete(state[p], "destroying the deployment") for p in sorted(state)]
        return Plan(tuple(changes))
    unknown = sorted((structural or {}).items())
    for path in sorted(set(desired) | set(state)):
        if path in desired:
            change = decide(desired[path], state.get(path))
            if reorder and path in reorder and change.action is Action.NOOP:
                change = Change(path, Action.UPDATE, change.type, change.before, change.after, (), reorder[path])
            elif path in made and desired[path].stateless and change.action is Action.UPDATE and not change.fields:
                change = Change(path, Action.NOOP, change.type, change.before, change.after, (), "made in this apply")
            changes.append(change)
        elif blockers := next((w for s, w in unknown if paths.within(path, s)), None):
            old = state[path]
            why = f"kept: whether it is still declared is known after apply of {', '.join(sorted(blockers))}"
            changes.append(Change(path, Action.NOOP, old.type, old, None, (), why))
        else:
            changes.append(delete(state[path]))
    return Plan(tuple(changes), structural=tuple((s, tuple(sorted(w))) for s, w in unknown))


def out_of_order(desired: Mapping[str, DesiredResource], state: Mapping[str, ResourceState]) -> dict[str, str]:
    """Unchanged resources that now read a resource whose last operation came after theirs (same inputs, a new
    read): their rank no longer orders them after what they read, and a resource reading them without a trace
    would not be ordered either. Re-recording them (an update without provider call) makes every reader of them
    wait and be recorded again too. Records older than ranks (rank 0) are left to their edges."""
    found: dict[str, str] = {}
    for path, wanted in desired.items():  # (10,000 resources: most read nothing new)
        reads = wanted.reads
        if not reads or (old := state.get(path)) is None or not (rank := old.rank):
            continue
        edges = old.dependencies
        if len(reads) == len(edges) and all(e in reads for e in edges):
            continue  # recorded reads: their sources changed since only if it was applied again after them
        later = sorted(s for s in reads if (source := state.get(s)) is not None and source.rank >= rank)
        if later and wanted.ready and decide(wanted, old).action is Action.NOOP:
            found[path] = f"now reads {', '.join(later)}, applied after it: recorded again after it (no provider call)"
    return found


def refreshed(
    plan: Plan, desired: Mapping[str, DesiredResource], state: Mapping[str, ResourceState]
) -> dict[str, ResourceState]:
    """The records of unchanged resources to write again without any provider call: the edges this evaluation saw
    them read, and the mark on every resource that was seen read (see ``ResourceState.read``)."""
    records: dict[str, ResourceState] = {}
    moving = changing(plan)
    for change in plan.changes:
        old, wanted = change.before, desired.get(change.path)
        if change.action is not Action.NOOP or old is None or wanted is None:
            continue
        reads, edges = wanted.reads, old.dependencies  # (reads never name the resource itself)
        if len(reads) != len(edges) or not all(e in reads for e in edges):
            records[change.path] = replace(old, dependencies=tuple(sorted(reads)))
    for wanted in desired.values():
        for source in wanted.reads:
            old = state.get(source)
            if old is None or (old.read and source not in records) or source in moving:
                continue
            old = records.get(source, old)
            if not old.read:
                records[source] = replace(old, read=True)
    return records


def changing(plan: Plan) -> frozenset[str]:
    """Paths whose outputs are not final until apply: those created, updated or replaced."""
    moving = {Action.CREATE, Action.UPDATE, Action.REPLACE}
    return frozenset(c.path for c in plan.changes if c.action in moving)


def check_protected(plan: Plan, entry_file: str = "deployment.nix") -> None:
    """Refuse a plan that deletes or replaces a resource with ``lifecycle.preventDestroy = true``."""
    problems = []
    for c in plan.changes:
        if c.action is Action.DELETE and c.before is not None and c.before.prevent_destroy:
            problems.append(
                f"  - {c.path} ({c.type}) would be deleted ({c.reason}); it has lifecycle.preventDestroy = true"
            )
        elif c.action is Action.REPLACE and (
            (c.after is not None and c.after.prevent_destroy) or (c.before is not None and c.before.prevent_destroy)
        ):
            problems.append(f"  - {c.path} would be replaced ({c.reason}); it has lifecycle.preventDestroy = true")
    if problems:
        raise PlanError(
            "The plan would destroy protected resources:\n"
            + "\n".join(problems)
            + f"\nNothing was changed. To destroy them on purpose, set lifecycle.preventDestroy = false on each in"
            f" {entry_file} and apply that first; otherwise undo the change that removes or replaces them."
        )


def check_empty_deployment(
    plan: Plan,
    desired: Mapping[str, DesiredResource],
    entry_file: str = "deployment.nix",
    *,
    commit: str | None = None,
    allow: bool = False,
) -> None:
    """Refuse a plan that would delete every resource in state because the deployment declares none.

    A deployment that evaluates to nothing (a file whose value has no ``members``, the wrong ``file``) is almost
    always a mistake, and applying it would delete everything. Pure: no I/O; ``allow`` (from
    ``--allow-empty`` or ``allow_empty = true``) lets it through. ``destroy`` plans are not checked here.
    """
    deletes = sum(1 for c in plan.changes if c.action is Action.DELETE)
    if allow or desired or deletes == 0:
        return
    where = f"{entry_file} (commit {commit[:12]})" if commit else entry_file
    raise EmptyDeploymentError(
        f"{where} declares no resources, so this plan would delete every resource in state ({deletes}"
        f" resource{'' if deletes == 1 else 's'}). Nothing was changed. This is usually a mistake: the wrong entry"
        " file, or a file whose value has no `members`. To delete everything on purpose, run"
        " `nixgitops destroy`; to apply the empty deployment anyway, pass --allow-empty to `nixgitops plan` and"
        " `nixgitops apply`, or set allow_empty = true for the deployment in the controller configuration."
    )


def without_deletes(plan: Plan) -> Plan:
    """The plan with its deletes turned into no-ops: for deployments with ``prune = false``."""
    kept = tuple(
        Change(c.path, Action.NOOP, c.type, c.before, None, (), "not in the deployment, kept: prune is off")
        if c.action is Action.DELETE
        else c
        for c in plan.changes
    )
    return replace(plan, changes=kept)
