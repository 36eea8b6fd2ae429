"""State surgery: ``nixgitops state rm`` and ``state mv`` change what state records without calling a provider.

``remove`` and ``move`` decide (no I/O): from the state and the paths the journal holds, they return a
``Surgery`` (records to write and to delete, journal entries to drop, what to report) or raise ``UserError``
naming the path, with close matches. ``perform`` writes a surgery as exactly one commit on the state branch,
then drops the journal's entries about removed paths. The caller holds the deployment's lock.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller import paths
from controller.errors import UserError
from controller.journal import Journal
from controller.model import ResourceState
from controller.state_branch import StateBranch


@dataclass(frozen=True)
class Surgery:
    """What one ``state rm`` or ``state mv`` changes."""

    title: str
    lines: tuple[str, ...]
    upserts: dict[str, ResourceState] = field(default_factory=dict)
    deletes: frozenset[str] = frozenset()
    forget: frozenset[str] = frozenset()
    """Paths whose journal entries are dropped (``state rm``)."""
    report: dict[str, Any] = field(default_factory=dict)


def _members(state: Iterable[str], prefix: str) -> list[str]:
    """The resources inside the composite ``prefix``."""
    return sorted(p for p in state if p != prefix and paths.within(p, prefix))


def _prefixes(path: str) -> list[str]:
    """``a.b.c``, and the composites it is in: ``a.b``, ``a``."""
    try:
        parts = paths.parse(path)
    except UserError:
        return [path]
    return [paths.render(parts[:n]) for n in range(len(parts), 0, -1)]


def _unknown(path: str, known: Iterable[str], deployment: str) -> UserError:
    names = sorted({prefix for p in known for prefix in _prefixes(p)})
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.6)
    close += [p for p in names if (p.startswith(path) or path.startswith(p)) and p not in close][: 5 - len(close)]
    hint = (
        f" Close matches: {', '.join(close)}."
        if close
        else " `nixgitops state list` shows what is there."
        if names
        else " State is empty."
    )
    return UserError(f"No resource {path!r} in the state of deployment {deployment!r}.{hint}")


def remove(
    state: Mapping[str, ResourceState], paths: Iterable[str], *, journaled: Iterable[str] = (), deployment: str
) -> Surgery:
    """Forget ``paths`` (a composite's path: all its members). A path the journal holds an operation on that is not
    settled (``journaled``) may be named even when it is not in state: its journal entries are dropped."""
    in_journal = set(journaled)
    removed: list[str] = []
    dropped: set[str] = set()
    for path in paths:
        found = [path] if path in state else _members(state, path)
        pending = {path} & in_journal | set(_members(in_journal, path))
        if not found and not pending:
            raise _unknown(path, [*state, *in_journal], deployment)
        removed += [p for p in found if p not in removed]
        dropped |= pending | (set(found) & in_journal)
    lines = tuple(
        [f"rm {p} ({state[p].type})" for p in removed]
        + [f"dropped the unsettled operation on {p} from the journal" for p in sorted(dropped)]
    )
    shown = ", ".join(removed or sorted(dropped))
    return Surgery(
        title=f"State rm: {len(removed)} resource{'' if len(removed) == 1 else 's'} forgotten ({shown})"[:200],
        lines=lines,
        deletes=frozenset(removed),
        forget=frozenset(dropped),
        report={
            "removed": [{"path": p, "type": state[p].type} for p in removed],
            "unsettledDropped": sorted(dropped),
        },
    )


def move(
    state: Mapping[str, ResourceState], old: str, new: str, *, journaled: Iterable[str] = (), deployment: str
) -> Surgery:
    """Rename ``old`` to ``new`` (a composite: every member under it), and every record's dependencies on it."""
    if not new or paths.render(paths.parse(new)) != new:
        raise UserError(
            f"{new!r} is not a member path as nixgitops writes it: names joined by dots, a name other than letters,"
            ' digits, _, \' and - in double quotes (a."file.txt").'
        )
    if old == new:
        raise UserError(f"{old!r} and {new!r} are the same path; nothing to move.")
    busy = sorted(p for p in journaled if p in (old, new) or p.startswith((old + ".", new + ".")))
    if busy:
        raise UserError(
            f"An operation on {', '.join(busy)} is not settled (the journal holds it), so it cannot be moved: run"
            " `nixgitops apply` once its provider is reachable, or `nixgitops state rm` it if it is known to be gone."
        )
    sources = [old] if old in state else _members(state, old)
    if not sources:
        raise _unknown(old, state, deployment)
    moves = {p: new + p[len(old) :] for p in sources}
    staying = sorted(p for p in state if p not in moves)
    for target in moves.values():
        clash = [p for p in staying if p == target or p.startswith(target + ".") or target.startswith(p + ".")]
        if clash:
            raise UserError(
                f"Cannot move {old!r} to {new!r}: {clash[0]!r} is already in state. Remove or move it first;"
                " `nixgitops state mv` never overwrites."
            )

    def renamed(dependencies: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(moves.get(d, d) for d in dependencies))

    upserts = {
        target: replace(state[source], path=target, dependencies=renamed(state[source].dependencies))
        for source, target in moves.items()
    }
    readers = sorted(p for p in staying if any(d in moves for d in state[p].dependencies))
    for path in readers:
        upserts[path] = replace(state[path], dependencies=renamed(state[path].dependencies))
    lines = tuple([f"mv {s} -> {t}" for s, t in moves.items()] + [f"dependencies renamed in {p}" for p in readers])
    count = f" ({len(moves)} resources)" if len(moves) > 1 else ""
    return Surgery(
        title=f"State mv: {old} -> {new}{count}"[:200],
        lines=lines,
        upserts=upserts,
        deletes=frozenset(moves),
        report={"moved": [{"from": s, "to": t} for s, t in moves.items()], "dependenciesUpdated": readers},
    )


def perform(surgery: Surgery, store: StateBranch, journal: Path) -> str | None:
    """Write ``surgery`` as one commit on ``store``'s branch (None when state does not change: only journal
    entries were dropped), then drop its journal entries. No provider is called."""
    commit = None
    if surgery.upserts or surgery.deletes:
        message = "\n".join(
            [
                surgery.title,
                "",
                *surgery.lines,
                "",
                "No provider was called: only what state records changed.",
                "",
            ]
        )
        commit = store.commit(upserts=surgery.upserts, deletes=surgery.deletes, meta=store.load_meta(), message=message)
    if surgery.forget and journal.exists():
        opened = Journal(journal)
        try:
            opened.forget(set(surgery.forget))
        finally:
            opened.close()
    return commit
