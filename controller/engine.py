"""The engine: evaluate, plan and apply one deployment against its state branch.

``compute_plan`` runs evaluation passes until the set of resources whose outputs will change is stable:
the first pass treats every recorded output as known; each later pass makes the outputs of the resources
that will change unknown, so that their readers show ``(known after apply)``. A deployment that did not
change is planned in a single pass. ``Engine`` adds the repository, the state branch and the providers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pygit2

from controller import failpoints, planning
from controller.apply import Event, Executor, Outcome, now
from controller.errors import DeploymentError, NixgitopsError
from controller.evaluation import Evaluation, NixEvaluator
from controller.graph import closure, describe_cycle, find_cycle, invert
from controller.journal import Journal
from controller.model import DesiredResource, EvalLimits, ProviderSpec, ResourceState
from controller.planning import Action, Plan
from controller.provider_client import Providers
from controller.recovery import recover
from controller.state_branch import (
    DEFAULT_BRANCH,
    DEFAULT_IDENTITY,
    StateBranch,
    has_uncommitted_changes,
    open_repository,
    source_commit,
)


class Evaluator(Protocol):
    def evaluate(
        self, known: Mapping[str, Mapping[str, Any]], *, select: set[str] | None = None, probe: set[str] = ...
    ) -> Evaluation: ...


@dataclass(frozen=True)
class Planned:
    """A plan and what it was computed from."""

    plan: Plan
    desired: dict[str, DesiredResource]
    dependencies: dict[str, frozenset[str]]
    providers: dict[str, ProviderSpec]
    state: dict[str, ResourceState]
    passes: int


def check_providers(plan: Plan, providers: Mapping[str, ProviderSpec], entry: str) -> None:
    """Refuse a plan that must call a provider the deployment no longer declares."""
    orphans = sorted(
        f"  - {c.path} ({c.type})" for c in plan.changes if c.action is not Action.NOOP and c.provider not in providers
    )
    if orphans:
        names = sorted({c.provider for c in plan.changes if c.provider not in providers})
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
) -> Planned:
    """Evaluate until stable and plan; raises for cycles and for plans that destroy protected resources."""
    state = dict(state)
    if destroy:
        answer = evaluator.evaluate({}, select=set())
        plan = planning.plan({}, state, destroy=True)
        planning.check_protected(plan, entry)
        check_providers(plan, answer.providers, entry)
        return Planned(plan, {}, {}, answer.providers, state, 1)
    unknown: frozenset[str] = frozenset()
    dependencies: dict[str, frozenset[str]] = {}
    passes = 0
    predicted = False
    while True:
        passes += 1
        known = {p: dict(s.outputs) for p, s in state.items() if p not in unknown}
        answer = evaluator.evaluate(known, probe=set(unknown - dependencies.keys()))
        dependencies.update(answer.dependencies)
        plan = planning.plan(answer.resources, state)
        moving = planning.changing(plan)
        if moving == unknown:
            break
        if moving < unknown:
            unknown = moving  # predicted too much; shrinking converges (see docs/decisions.md)
        elif not predicted:
            # The recorded readers of what changes will wait for it too: one pass instead of one per level.
            predicted = True
            edges = {p: s.dependencies for p, s in state.items()} | dependencies
            unknown = frozenset(closure(unknown | moving, invert(edges)) & answer.resources.keys())
        else:
            unknown = unknown | moving
    edges = {
        p: (dependencies.get(p, frozenset()) | answer.resources[p].blocked_by) & unknown
        for p in unknown
        if p in answer.resources
    }
    cycle = find_cycle(edges)
    if cycle:
        raise DeploymentError(
            f"The resources in {entry} read each other's outputs in a cycle: {describe_cycle(cycle)}."
            " No order can apply them; remove one of these reads."
        )
    planning.check_protected(plan, entry)
    check_providers(plan, answer.providers, entry)
    return Planned(plan, answer.resources, dependencies, answer.providers, state, passes)


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
    ) -> None:
        """``source_root``: the root of the source tree, which a restricted evaluation may read (default: the
        entry file's directory)."""
        self.settings = settings
        self.workdir = workdir or entry_file.parent
        self.entry_file = entry_file
        self.repo = repo
        self.source_commit = source_commit
        self.dirty = dirty
        self.store = StateBranch(
            repo, branch=settings.state_branch, deployment=settings.deployment, identity=settings.identity
        )
        self.journal_path = journal
        self.evaluator = NixEvaluator(
            entry_file,
            source=source_commit,
            show_trace=settings.show_trace,
            log=log,
            limits=settings.evaluation,
            root=source_root,
        )
        self.log = log

    @classmethod
    def for_checkout(cls, settings: Settings, *, log: Callable[[str], None] | None = None) -> Engine:
        """The deployment in a Git checkout, as the command line uses it (state on a local branch)."""
        entry = Path(settings.entry)
        entry_file = entry if entry.is_absolute() else (settings.directory / entry)
        repo = open_repository(entry_file.parent if entry_file.parent.exists() else settings.directory)
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
        journal = Journal(self.journal_path)
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
            journal.clear(keep=unsettled)
            if unsettled:
                raise NixgitopsError(
                    f"{len(unsettled)} operation(s) of an interrupted run could not be settled, so nothing else was"
                    " done (planning now could create them twice):\n"
                    + "\n".join(n for n in notes if "could not be settled" in n)
                    + "\nMake the provider reachable again and rerun; the journal keeps them until then."
                )
            return notes
        finally:
            journal.close()

    def plan(self, *, destroy: bool = False) -> Planned:
        return compute_plan(self.evaluator, self.load_state(), destroy=destroy, entry=str(self.entry_file))

    def apply(self, planned: Planned, *, report: Callable[[Event], None] = lambda e: None) -> RunResult:
        """Carry out ``planned`` and commit what was done to the state branch, even when some of it failed."""
        journal = Journal(self.journal_path)
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
        )
        try:
            with executor.providers, self.evaluator.session():
                executor.run(planned.plan, planned.desired, planned.dependencies, planned.state)
        finally:
            try:
                started = time.monotonic()
                commit = self.commit(planned.state, executor.state, executor.outcomes)
                seconds = time.monotonic() - started
                failpoints.hit("journal-clear")
                journal.clear(keep=journal.unresolved())  # only once the state commit holds what it recorded
            finally:
                journal.close()
        return RunResult(executor.outcomes, commit, _counts(executor.outcomes), seconds)

    def commit(
        self,
        before: Mapping[str, ResourceState],
        after: Mapping[str, ResourceState],
        outcomes: Mapping[str, Outcome],
        *,
        note: str | None = None,
    ) -> str | None:
        """Commit the resources that changed and the run's summary; nothing when neither the resources nor the
        attempted or applied commit changed."""
        upserts = {p: s for p, s in after.items() if before.get(p) != s}
        deletes = set(before) - set(after)
        counts = _counts(outcomes)
        ok = all(o.status == "ok" for o in outcomes.values()) and note is None
        stored = self.store.load_meta()
        meta: dict[str, Any] = dict(stored)
        meta.update(deployment=self.settings.deployment, lastAttemptedCommit=self.source_commit)
        if ok:
            meta["lastAppliedCommit"] = self.source_commit
        unchanged = all(meta.get(k) == stored.get(k) for k in ("lastAttemptedCommit", "lastAppliedCommit"))
        if not upserts and not deletes and unchanged:
            return None
        result = "success" if ok else "failed"
        meta["lastRun"] = {"at": now(), "sourceCommit": self.source_commit, "result": result, "counts": counts}
        if note is not None:
            meta["lastRun"]["message"] = note
        meta["sourceDirty"] = self.dirty
        source = self.source_commit or "none"
        plus = counts["create"] + counts["replace"]
        minus = counts["delete"] + counts["replace"]
        title = f"Apply {source[:12]}: +{plus} ~{counts['update']} -{minus}"
        if not ok:
            title += f" ({counts['failed']} failed, {counts['skipped']} skipped)" if note is None else f" ({note})"
        body = [f"{o.action.value} {o.path}: {o.status}" for o in sorted(outcomes.values(), key=lambda o: o.path)]
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
