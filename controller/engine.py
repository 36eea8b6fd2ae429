"""The engine: evaluate, plan and apply one deployment against its state branch.

``compute_plan`` runs evaluation passes until the set of resources whose outputs will change is stable:
the first pass treats every recorded output as known; each later pass makes the outputs of the resources
that will change unknown, so that their readers show ``(known after apply)``. A deployment that did not
change is planned in a single pass. ``Engine`` adds the repository, the state branch and the providers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from controller import planning
from controller.apply import Event, Executor, Outcome, now
from controller.errors import DeploymentError
from controller.evaluation import Evaluation, NixEvaluator
from controller.graph import closure, describe_cycle, find_cycle, invert
from controller.model import DesiredResource, ProviderSpec, ResourceState
from controller.planning import Action, Plan
from controller.provider_client import Providers
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


@dataclass
class RunResult:
    """What an apply did."""

    outcomes: dict[str, Outcome]
    commit: str | None
    counts: dict[str, int] = field(default_factory=dict)

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
    """One deployment in one Git checkout: its evaluator, its state branch, its providers."""

    def __init__(self, settings: Settings, *, log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        entry = Path(settings.entry)
        self.entry_file = entry if entry.is_absolute() else (settings.directory / entry)
        self.repo = open_repository(self.entry_file.parent if self.entry_file.parent.exists() else settings.directory)
        self.source_commit = source_commit(self.repo)
        self.dirty = has_uncommitted_changes(self.repo)
        self.store = StateBranch(
            self.repo,
            branch=settings.state_branch,
            deployment=settings.deployment,
            identity=settings.identity,
        )
        self.evaluator = NixEvaluator(
            self.entry_file, source=self.source_commit, show_trace=settings.show_trace, log=log
        )
        self.log = log

    def load_state(self) -> dict[str, ResourceState]:
        return self.store.load()

    def plan(self, *, destroy: bool = False) -> Planned:
        return compute_plan(self.evaluator, self.load_state(), destroy=destroy, entry=str(self.entry_file))

    def apply(self, planned: Planned, *, report: Callable[[Event], None] = lambda e: None) -> RunResult:
        """Carry out ``planned`` and commit what was done to the state branch, even when some of it failed."""
        executor = Executor(
            providers=Providers(
                planned.providers,
                size=self.settings.parallelism,
                timeout=self.settings.provider_timeout,
                cwd=str(self.entry_file.parent),
                log=self.log,
            ),
            evaluate=lambda known, select: self.evaluator.evaluate(known, select=select),
            parallelism=self.settings.parallelism,
            source_commit=self.source_commit,
            report=report,
        )
        try:
            with executor.providers:
                executor.run(planned.plan, planned.desired, planned.dependencies, planned.state)
        finally:
            commit = self._commit(planned.state, executor.state, executor.outcomes)
        return RunResult(executor.outcomes, commit, _counts(executor.outcomes))

    def _commit(
        self,
        before: Mapping[str, ResourceState],
        after: Mapping[str, ResourceState],
        outcomes: Mapping[str, Outcome],
    ) -> str | None:
        upserts = {p: s for p, s in after.items() if before.get(p) != s}
        deletes = set(before) - set(after)
        if not upserts and not deletes:
            return None
        counts = _counts(outcomes)
        ok = all(o.status == "ok" for o in outcomes.values())
        source = self.source_commit or "none"
        meta: dict[str, Any] = dict(self.store.load_meta())
        meta.update(
            deployment=self.settings.deployment,
            lastAttemptedCommit=self.source_commit,
            lastRun={
                "at": now(),
                "sourceCommit": self.source_commit,
                "result": "success" if ok else "failed",
                "counts": counts,
            },
        )
        if ok:
            meta["lastAppliedCommit"] = self.source_commit
        meta["sourceDirty"] = self.dirty
        plus = counts["create"] + counts["replace"]
        minus = counts["delete"] + counts["replace"]
        title = f"Apply {source[:12]}: +{plus} ~{counts['update']} -{minus}"
        if not ok:
            title += f" ({counts['failed']} failed, {counts['skipped']} skipped)"
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
        return self.store.commit(upserts=upserts, deletes=deletes, meta=meta, message=message)
