"""One reconcile of one deployment: fetch -> check -> evaluate and plan -> apply -> commit state -> push state.

Every run ends in a ``Run`` record with its outcome and per-phase timings, also written to the status file.
Outcomes, and what the scheduler does next:

    success, no-change     applied (or nothing to do) and the state branch pushed: wait for the next poll
    planned                apply = "plan-only": the plan is in the status file
    evaluation-failed      the commit does not evaluate or plan: not retried until a new commit or a forced run
    refused                it declares no resources, so its plan would delete everything: planned again at each
                           poll (allow_empty = true lets it through)
    rejected, unverified   the branch moved backwards / the head is not signed by a trusted key: not applied
    failed                 some operations failed: retried with backoff
    unavailable            a remote could not be reached: retried with backoff
    conflict               the remote state branch moved under us: the deployment stops until an operator acts
    suspended, skipped, branch-missing
    busy                   another process (same data_dir) is reconciling this deployment: nothing was done
"""

from __future__ import annotations

import collections
import datetime
import fcntl
import functools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pygit2

from controller import failpoints
from controller.apply import Event
from controller.config import Config, DeploymentConfig
from controller.drift import detect
from controller.engine import STRUCTURE_ROUNDS, Engine, Settings
from controller.errors import EmptyDeploymentError, NixgitopsError, UserError
from controller.metrics import Metrics
from controller.plan_render import plan_json
from controller.planning import Plan, without_deletes
from controller.previews import Previews
from controller.processes import CommandFailed, run
from controller.provider_client import Providers
from controller.sensitive import mask_default, mask_sealed, redact_value
from controller.source import BranchMissing, Cache, SourceUnavailable, redact, remote_ref, remote_refs
from controller.state_branch import StateBranch
from webhooks.forge import ForgeError

RETRY = {"failed", "unavailable", "busy"}
SHARED_RETRIES = 5  # pushes of one run, each after taking what other deployments sharing the state branch pushed


@dataclass
class Run:
    deployment: str
    outcome: str
    message: str = ""
    source_commit: str | None = None
    started_at: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    state_commit: str | None = None
    build_log: list[str] = field(default_factory=list)
    """The last BUILD_LOG_LINES lines Nix printed building what the run needed (kept with the run)."""

    @property
    def ok(self) -> bool:
        return self.outcome in ("success", "no-change", "planned")

    @property
    def retry(self) -> bool:
        return self.outcome in RETRY


BUILD_LOG_LINES = 200


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Stop(Exception):
    """Ends a run early with an outcome."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class Reconciler:
    """Runs reconciles of one deployment, one at a time."""

    def __init__(
        self,
        config: Config,
        deployment: DeploymentConfig,
        *,
        log: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
    ):
        self.config = config
        self.deployment = deployment
        self.log = log
        self.metrics = metrics
        self.history: collections.deque[Run] = collections.deque(maxlen=50)
        self.reached = False  # the source remote answered at least once (for /readyz)
        self._plan_counts: dict[str, int] | None = None
        self._drift_checked = float("-inf")
        # (source commit, state commit) after the last run that applied everything: polling the same pair again
        # needs no evaluation
        self._settled: tuple[str, str | None] | None = None
        self._previews: Previews | None = None
        self._previews_lock = threading.Lock()
        data = config.data_dir
        self._source_dir = data / "git" / deployment.name
        self._state_dir = (
            self._source_dir
            if deployment.state_url == deployment.repository
            else data / "git" / f"{deployment.name}.state"
        )
        self.status_path = data / "status" / f"{deployment.name}.json"
        self.plan_path = data / "plans" / f"{deployment.name}.json"
        self.journal = data / "journal" / f"{deployment.name}.journal"
        self.checkouts = data / "checkouts" / deployment.name
        self.workdir = data / "work" / deployment.name  # providers' working directory: stable across commits
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.suspend_flag = data / "suspended" / deployment.name
        self.stall_flag = data / "stalled" / deployment.name
        self.lock_path = data / "locks" / f"{deployment.name}.lock"
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.last: Run | None = None
        self.failed_evaluation: str | None = self.status().get("failedEvaluationCommit")

    @functools.cached_property
    def source(self) -> Cache:
        return Cache(self._source_dir)

    @functools.cached_property
    def state_cache(self) -> Cache:
        return self.source if self._state_dir == self._source_dir else Cache(self._state_dir)

    # -- flags and status ------------------------------------------------------------------------------

    @property
    def suspended(self) -> bool:
        return self.deployment.suspend or self.suspend_flag.exists()

    def stalled(self) -> str | None:
        return self.stall_flag.read_text() if self.stall_flag.exists() else None

    def _flag(self, path: Path, text: str | None) -> None:
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def suspend(self) -> None:
        self._flag(self.suspend_flag, _now())

    def resume(self, *, adopt_remote_state: bool = False) -> None:
        self._flag(self.suspend_flag, None)
        if self.stalled() is not None:
            if not adopt_remote_state:
                raise UserError(
                    f"Deployment {self.deployment.name!r} is stopped: {self.stalled()}\nCheck who else writes the"
                    " state branch, then run `nixgitops resume NAME --adopt-remote-state` to continue from the"
                    " remote state branch (local state commits that were never pushed are dropped)."
                )
            remote = remote_ref(self.deployment.state_url, self._state_ref)
            if remote is not None:
                self.state_cache.fetch(self.deployment.state_url, self._state_ref, self._state_ref)
                self.state_cache.repo.references.create(self._pushed_ref, remote, force=True)
            else:
                for ref in (self._state_ref, self._pushed_ref):
                    if ref in self.state_cache.repo.references:
                        self.state_cache.repo.references.delete(ref)
            self._flag(self.stall_flag, None)

    def status(self) -> dict[str, Any]:
        try:
            data = json.loads(self.status_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def last_plan(self) -> dict[str, Any] | None:
        """The plan of the last run that got as far as planning (the changes only; unchanged ones are counted)."""
        try:
            data = json.loads(self.plan_path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _write_status(self, record: Run, extra: dict[str, Any]) -> None:
        """Record the run in the status files; a status that cannot be written (a full disk) is logged, and the
        run's outcome is still returned and counted."""
        try:
            self._write_status_files(record, extra)
        except OSError as exc:
            if self.log is not None:
                self.log(f"[{self.deployment.name}] cannot write the status files in {self.status_path.parent}: {exc}")

    def _write_status_files(self, record: Run, extra: dict[str, Any]) -> None:
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        plan = extra.pop("lastPlan", None)
        if plan is not None:  # a file of its own, written compactly: it grows with the deployment
            self.plan_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.plan_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(redact_value(plan), separators=(",", ":"), default=mask_default))
            os.replace(tmp, self.plan_path)
        status = self.status()
        status.pop("lastPlan", None)  # kept here by earlier versions
        status.update(
            deployment=self.deployment.name,
            repository=redact(self.deployment.repository),
            branch=self.deployment.branch,
            suspended=self.suspended,
            stalled=self.stalled(),
            failedEvaluationCommit=self.failed_evaluation,
            lastRun=asdict(record),
            **extra,
        )
        if record.source_commit:
            status["sourceCommit"] = record.source_commit
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(redact_value(status), indent=2, sort_keys=True))
        os.replace(tmp, self.status_path)

    def _keeping_builds(self, record: Run) -> Callable[[str], None]:
        """The engine's log: every line goes to the controller's log; build lines are also kept with ``record``."""
        kept = record.build_log

        def log(line: str) -> None:
            if line.startswith("[build] "):
                kept.append(line.removeprefix("[build] "))
                del kept[:-BUILD_LOG_LINES]
            if self.log is not None:
                self.log(line)

        return log

    def resources(self) -> list[dict[str, Any]]:
        """The resources on the local copy of the state branch, as JSON records."""
        if self._local(self._state_ref) is None:
            return []
        d = self.deployment
        state = StateBranch(self.state_cache.repo, branch=d.state_branch, deployment=d.name).load()
        return [mask_sealed(state[p].to_json()) for p in sorted(state)]  # (sealed values read as they are stored)

    # -- refs ------------------------------------------------------------------------------------------

    @property
    def _state_ref(self) -> str:
        return f"refs/heads/{self.deployment.state_branch}"

    @property
    def _pushed_ref(self) -> str:
        return f"refs/nixgitops/pushed/{self.deployment.state_branch}"

    def _local(self, ref: str) -> str | None:
        found = self.state_cache.repo.references.get(ref)
        return str(found.target) if found is not None else None

    # -- the run ---------------------------------------------------------------------------------------

    def reconcile(self, *, force: bool = False) -> Run:
        """One reconcile; never raises for anything but a bug."""
        with self.lock, open(self.lock_path, "a") as lock:
            record = Run(self.deployment.name, "running", started_at=_now())
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                record.outcome = "busy"
                record.message = "another nixgitops process is reconciling this deployment (same data_dir)"
                return record
            extra: dict[str, Any] = {}
            try:
                self._reconcile(record, extra, force)
            except Stop as stop:
                record.outcome, record.message = stop.outcome, str(stop)
            except SourceUnavailable as exc:
                record.outcome, record.message = "unavailable", str(exc)
            except BranchMissing as exc:
                record.outcome, record.message = "branch-missing", str(exc)
            except NixgitopsError as exc:
                record.outcome, record.message = "failed", str(exc)
            self.last = record
            self.history.append(record)
            try:
                self._show_outcome(record)
            except (NixgitopsError, ForgeError, OSError) as exc:  # the forge never fails a run
                if self.log is not None:
                    self.log(f"[{self.deployment.name}] cannot show the outcome: {str(exc).splitlines()[0]}")
            self._write_status(record, extra)
            self._observe(record)
            if self.log is not None:
                self.log(f"[{self.deployment.name}] {record.outcome}: {record.message}".rstrip(": "))
            return record

    @property
    def previews(self) -> Previews | None:
        """Previews and outcomes on the forge, when the deployment names one; None while its client cannot start
        (a token file that cannot be read: logged, and tried again at the next use). Never fails a reconcile."""
        if self._previews is not None or self.deployment.forge is None:
            return self._previews
        with self._previews_lock:
            if self._previews is None:
                try:
                    self._previews = self._open_previews()
                except (NixgitopsError, ForgeError, OSError, ValueError) as exc:
                    if self.log is not None:
                        self.log(f"[{self.deployment.name}] no previews or statuses: {str(exc).splitlines()[0]}")
                    return None
        return self._previews

    def _open_previews(self) -> Previews | None:
        count = None
        if self.metrics is not None:
            metrics, name, forge = self.metrics, self.deployment.name, self.deployment.forge or "-"

            def count(kind: str, result: str) -> None:
                if kind == "preview":
                    metrics.previews.labels(name, result).inc()
                else:
                    metrics.forge_requests.labels(forge, result).inc()

        return Previews.for_reconciler(self, log=self.log, count=count)

    def preview_book(self) -> dict[str, Any]:
        """Each pull request's last preview (head, outcome, digest, the whole plan): what a comment cut at the
        forge's limit leaves out."""
        return self.previews.book.pulls() if self.previews is not None else {}

    def approve(self, commit: str) -> str:
        """Let ``commit`` (a unique prefix will do) be applied though its plan is not the one shown for review;
        the full commit id. Kept in the data directory."""
        if self.previews is None:
            raise UserError(f"Deployment {self.deployment.name!r} has no forge: there is nothing to approve.")
        try:
            found = str(self.source.repo.revparse_single(commit).peel(pygit2.Commit).id)
        except (KeyError, ValueError, pygit2.GitError):
            raise UserError(
                f"No commit {commit!r} in the cache of deployment {self.deployment.name!r}; give the commit the"
                " status names (it is fetched by the run that held it)."
            ) from None
        self.previews.book.approve(found)
        return found

    def _show_outcome(self, record: Run) -> None:
        """The run's outcome as the status of its commit (and on the pull request that brought it), once per commit
        and outcome (kept in the data directory: a poll of an applied commit, or a restart, shows nothing again;
        a no-change run of a commit already shown leaves what was shown)."""
        head = record.source_commit
        shown = record.outcome in ("success", "failed", "held", "evaluation-failed", "refused", "no-change")
        previews = self.previews
        if previews is None or head is None or not shown:
            return
        last = previews.book.shown(head)
        if last == record.outcome or (record.outcome == "no-change" and last is not None):
            return
        previews.book.mark_shown(head, record.outcome)
        previews.finished(head, record, self._parents(head))

    def _parents(self, commit: str) -> list[str]:
        try:
            return [str(p) for p in self.source.repo[commit].parent_ids]  # type: ignore[attr-defined]
        except (KeyError, ValueError):
            return []

    def _observe(self, record: Run) -> None:
        if self.metrics is None:
            return
        resources = None
        applied = None
        if record.outcome in ("success", "no-change", "failed") and self._local(self._state_ref) is not None:
            store = StateBranch(
                self.state_cache.repo, branch=self.deployment.state_branch, deployment=self.deployment.name
            )
            resources = dict(collections.Counter(r.type for r in store.load().values()))
            applied = store.load_meta().get("lastAppliedCommit")
        self.metrics.run(
            self.deployment.name,
            record.outcome,
            time.time(),
            record.phases,
            self._plan_counts,
            resources,
            applied,
            self.suspended,
        )
        self._plan_counts = None

    def _operation(self, plan: Plan) -> Callable[[Event], None]:
        providers = {c.path: c.provider for c in plan.changes}

        def report(event: Event) -> None:
            if event.kind == "ok" and event.message and self.log is not None:  # a resource forgotten, not deleted
                self.log(f"[{self.deployment.name}] warning: {event.path}: {event.message}")
            if self.metrics is not None and event.kind in ("ok", "failed") and event.action.value != "noop":
                provider = providers.get(event.path, "unknown")
                self.metrics.operation(self.deployment.name, provider, event.action.value, event.kind, event.seconds)

        return report

    def _timed(self, record: Run, phase: str, started: float) -> None:
        record.phases[phase] = round(record.phases.get(phase, 0.0) + time.monotonic() - started, 6)

    def _reconcile(self, record: Run, extra: dict[str, Any], force: bool) -> None:
        d = self.deployment
        if self.suspended:
            raise Stop("suspended", "suspended; `nixgitops resume` continues")
        if self.stalled() is not None:
            raise Stop("conflict", f"stopped until an operator acts: {self.stalled()}")
        started = time.monotonic()
        branch = f"refs/heads/{d.branch}"
        if d.state_url == d.repository:  # one round-trip for both refs
            refs = remote_refs(d.repository, branch, self._state_ref)
            head, remote_state = refs[branch], refs[self._state_ref]
        else:
            head, remote_state = remote_ref(d.repository, branch), remote_ref(d.state_url, self._state_ref)
        self.reached = True
        if head is None:
            raise BranchMissing(f"The branch {d.branch!r} does not exist in {redact(d.repository)}.")
        record.source_commit = head
        if not self.source.has(head):
            tracking = f"refs/remotes/origin/{d.branch}"
            self.source.fetch(d.repository, f"refs/heads/{d.branch}", tracking)
            head = self.source.ref(tracking) or head  # the branch may have moved since ls-remote: take the newest
            record.source_commit = head
        self._sync_state(remote_state)
        self._timed(record, "fetch", started)
        if head == self.failed_evaluation and not force:
            raise Stop("skipped", f"commit {head} failed to evaluate; waiting for a new commit")
        settled, self._settled = self._settled, None  # set again only by a run that ends settled
        if (
            not force
            and settled == (head, self._local(self._state_ref))
            and not self._drift_due()
            and not (self.journal.exists() and self.journal.stat().st_size > 0)
        ):
            # Restricted evaluation without allowed_paths depends only on the commit (the repository is all it
            # can read), and so does a flake's (pure, its inputs locked); planning depends on it and the state:
            # both are what the last run settled, so its answer stands. A forced run, a drift check or an
            # unsettled journal evaluates again.
            self._settled = settled
            record.outcome, record.message = "no-change", f"commit {head[:12]} is applied and nothing changed since"
            record.state_commit = self._local(self._state_ref)
            return
        self._check_history(head)
        self._verify(head)

        started = time.monotonic()
        checkout = self.checkouts / head
        if not checkout.exists():
            self.source.materialise(head, checkout)
        engine = self.engine(head, checkout, log=self._keeping_builds(record))
        for note in engine.recover():  # what cannot be settled stays in the journal and holds back its resources
            if self.log is not None:
                self.log(f"[{d.name}] recovered: {note}")
        for old in self.checkouts.iterdir() if not engine.pending_recovery() else ():
            if old.name != head:  # the journal is empty: older checkouts (its providers) can go
                shutil.rmtree(old, ignore_errors=True)
        # Stateless resources are made again on every apply of a new commit, as NixOps4 makes them on every apply;
        # evaluating an applied commit again (a drift check, a restart, another deployment's push to a shared state
        # branch) makes nothing again: a forced run does.
        made: set[str] = set()
        if not force and engine.store.load_meta().get("lastAppliedCommit") == head:
            made = {p for p, r in engine.load_state().items() if r.stateless}
        try:
            planned = engine.plan(allow_empty=d.allow_empty or not d.prune, made=made)  # no prune: nothing deleted
        except EmptyDeploymentError as exc:
            self._timed(record, "evaluate", started)
            self.failed_evaluation = None  # it evaluates: plan it again at each poll, so allow_empty takes effect
            state = engine.load_state()
            engine.commit(state, state, {}, note="plan refused: the deployment declares no resources")
            self._push(record)
            raise Stop("refused", str(exc)) from None
        except UserError as exc:
            self._timed(record, "evaluate", started)
            self.failed_evaluation = head
            state = engine.load_state()
            engine.commit(state, state, {}, note="evaluation failed")
            self._push(record)
            raise Stop("evaluation-failed", str(exc)) from None
        self._timed(record, "evaluate", started)  # evaluation passes and the (pure, quick) planning
        self.failed_evaluation = None
        plan: Plan = planned.plan if d.prune else without_deletes(planned.plan)
        extra["lastPlan"] = plan_json(
            plan, deployment=d.name, source_commit=head, dependencies=planned.dependencies, unchanged=False
        )
        record.counts = plan.counts()
        self._plan_counts = dict(record.counts)
        if d.apply == "plan-only":
            raise Stop("planned", f"plan only: {sum(v for k, v in record.counts.items() if k != 'noop')} change(s)")

        previews = self.previews
        if d.require_reviewed_plan and (plan.has_changes or plan.providers):
            if previews is None:  # fail closed: no review can be checked, so nothing is applied
                raise Stop(
                    "held", "not applied: the forge's client cannot start, so the reviewed plan cannot be checked"
                )
            why = previews.review(head, self._parents(head), plan)
            if why is not None:
                raise Stop("held", f"not applied: {why}")
        if plan.has_changes and previews is not None:
            previews.book.mark_shown(head, "running")  # (the outcome of this run is shown again, whatever it is)
            previews.started(head)
        started = time.monotonic()
        committing, outcome, message = 0.0, "no-change", "nothing to do"
        for round_ in range(STRUCTURE_ROUNDS):
            if not plan.has_changes:
                state = engine.load_state()
                began = time.monotonic()  # what unchanged resources read may have changed: their records are written
                commit = engine.commit(state, {**state, **planned.refresh}, {}, providers=planned.providers)
                record.state_commit = commit or record.state_commit
                committing += time.monotonic() - began
                break
            result = engine.apply(replace(planned, plan=plan), report=self._operation(plan))
            record.counts = (
                result.counts if round_ == 0 else {k: record.counts.get(k, 0) + v for k, v in result.counts.items()}
            )
            record.state_commit = result.commit or record.state_commit
            outcome = "success" if result.ok else "failed"
            failures = [f"{o.path}: {o.message}" for o in result.outcomes.values() if o.status == "failed"]
            message = "; ".join(failures)[:2000]
            committing += result.commit_seconds
            if not result.ok or not plan.structural or planned.held:
                break
            # the structure that outputs decided is known now: plan what it holds, and apply that too
            made.update(p for p, r in planned.desired.items() if r.stateless)
            try:
                planned = engine.plan(allow_empty=d.allow_empty or not d.prune, made=made)
            except UserError as exc:
                outcome, message = "failed", f"planning again once outputs were known: {exc}"[:2000]
                break
            plan = planned.plan if d.prune else without_deletes(planned.plan)
        else:
            outcome, message = "failed", f"the structure still depends on outputs after {STRUCTURE_ROUNDS} rounds"
        if planned.held:  # operations that are not settled held these back (Engine.plan): not everything was done
            held = "; ".join(f"{p}: {why}" for p, why in sorted(planned.held.items()))
            outcome, message = "failed", "; ".join(m for m in (message if outcome == "failed" else "", held) if m)
            message = message[:2000]
        self._timed(record, "apply", started)
        record.phases["apply"] = round(max(0.0, record.phases["apply"] - committing), 6)
        record.phases["commit"] = round(committing, 6)
        self._push(record)
        record.outcome, record.message = outcome, message
        if outcome in ("success", "no-change"):
            self._check_drift(record, extra, engine, planned.providers)
            pinned = d.evaluation.restrict and not d.evaluation.allowed_paths and not d.evaluation.nix_path
            if pinned or d.flake is not None:  # else it may read what changes (a flake's inputs are locked)
                self._settled = (head, self._local(self._state_ref))

    def engine(
        self,
        head: str,
        checkout: Path,
        *,
        log: Callable[[str], None] | None,
        repo: pygit2.Repository | None = None,
        preview: bool = False,
    ) -> Engine:
        """The engine of this deployment at commit ``head``, whose files are in ``checkout`` (``repo``: the state
        cache opened by the caller, for a thread of its own). ``preview``: a pull request's plan, which decrypts
        no sensitive output unless ``previews_decrypt`` (its code is not reviewed yet: docs/secrets.md)."""
        d = self.deployment
        encryption = d.encryption
        if preview and not d.previews_decrypt:
            hint = f"previews of {d.name!r} do not decrypt sensitive outputs unless previews_decrypt = true"
            encryption = replace(encryption, identity_files=(), identity_hint=hint)
        return Engine(
            Settings(
                directory=checkout,
                entry=d.file,
                deployment=d.name,
                state_branch=d.state_branch,
                parallelism=d.parallelism,
                provider_timeout=d.provider_timeout,
                identity=self.config.identity,
                evaluation=d.evaluation,
                nix=d.nix,
                flake=f".#{d.flake}" if d.flake is not None else None,
                member=d.member,
                encryption=encryption,
            ),
            repo=repo if repo is not None else self.state_cache.repo,
            entry_file=checkout / ("flake.nix" if d.flake is not None else d.file),
            source_commit=head,
            journal=self.journal,
            workdir=self.workdir,
            log=log,
            source_root=checkout,
            roots=self.config.data_dir / "gcroots" / d.name,
        )

    def _check_drift(self, record: Run, extra: dict[str, Any], engine: Engine, specs: Any) -> None:
        interval = self.deployment.drift_interval
        if interval is None or time.monotonic() - self._drift_checked < interval:
            return
        started = time.monotonic()
        self._drift_checked = started
        try:
            engine.build_providers(specs)
        except NixgitopsError as exc:
            if self.log is not None:
                self.log(f"[{self.deployment.name}] no drift check: {str(exc).splitlines()[0]}")
            return
        providers = Providers(
            specs, size=self.deployment.parallelism, timeout=self.deployment.provider_timeout, cwd=str(self.workdir)
        )
        with providers:
            found = detect(
                engine.load_state(), providers, parallelism=self.deployment.parallelism, wrap=engine.sealer.wrap
            )
        self._timed(record, "drift", started)
        extra["drift"] = {"checkedAt": _now(), "resources": list(found.drifted), "cannotTell": len(found.cannot_tell)}
        if self.metrics is not None:
            self.metrics.drift.labels(self.deployment.name).set(len(found.drifted))
        if found.drifted and self.log is not None:
            self.log(f"[{self.deployment.name}] drift: {', '.join(found.drifted)}")

    def _drift_due(self) -> bool:
        interval = self.deployment.drift_interval
        return interval is not None and time.monotonic() - self._drift_checked >= interval

    def _sync_state(self, remote: str | None) -> None:
        """Check that the remote state branch (at ``remote``) is where we left it (or adopt it on a first run)."""
        d = self.deployment
        pushed = self._local(self._pushed_ref)
        if pushed is None and self._local(self._state_ref) is None:
            if remote is not None:
                self.state_cache.fetch(d.state_url, self._state_ref, self._state_ref)
                self.state_cache.repo.references.create(self._pushed_ref, remote, force=True)
            return
        local = self._local(self._state_ref)
        if remote is not None and remote != pushed and local is not None and self.state_cache.has(remote):
            ours = self.state_cache.descends(local, remote) and (
                pushed is None or self.state_cache.descends(remote, pushed)
            )
            if ours:  # we pushed it, but died (or lost the reply) before recording that
                self.state_cache.repo.references.create(self._pushed_ref, remote, force=True)
                pushed = remote
        if remote != pushed and remote is not None and self._take_others(remote):
            return
        if remote != pushed:
            where = f"{d.state_branch!r} in {redact(d.state_url)}"
            what = "was deleted" if remote is None else f"moved to {remote[:12]}"
            message = (
                f"The remote state branch {where} {what}, but nixgitops last pushed"
                f" {(pushed or 'nothing')[:12]}: another writer exists. Nothing was applied. Find and stop the other"
                f" writer, then run `nixgitops resume {d.name} --adopt-remote-state`."
            )
            if pushed is None:
                message = f"The remote state branch {where} exists but this controller never pushed it."
            self._flag(self.stall_flag, message)
            raise Stop("conflict", message)

    def _take_others(self, remote: str) -> bool:
        """Deployments may share a state branch, each in its own directory (``member`` makes one repository hold
        several). When the remote branch moved past what this one pushed only in other deployments' directories,
        take their commits, and replay this deployment's commits that are not pushed yet on top (each changes only
        its own directory). False when the remote changed this deployment's directory, or went backwards: then
        another writer exists."""
        d, cache = self.deployment, self.state_cache
        pushed, local = self._local(self._pushed_ref), self._local(self._state_ref)
        theirs = f"refs/nixgitops/remote/{d.state_branch}"
        cache.fetch(d.state_url, self._state_ref, theirs)
        remote = cache.ref(theirs) or remote  # (it may have moved again since it was asked: the newest counts)
        if pushed is not None and not cache.descends(remote, pushed):
            return False
        repo = cache.repo

        def own(commit: str | None) -> str | None:
            tree = repo[commit].peel(pygit2.Tree) if commit is not None else None
            return str(tree[d.name].id) if tree is not None and d.name in tree else None

        if own(remote) != own(pushed):
            return False
        mine: list[pygit2.Commit] = []  # unpushed, oldest last
        if local is not None:
            for commit in repo.walk(local, pygit2.enums.SortMode.TOPOLOGICAL):
                if pushed is not None and str(commit.id) == pushed:
                    break
                mine.append(commit)
        base = remote
        for commit in reversed(mine):
            builder = repo.TreeBuilder(repo[base].peel(pygit2.Tree))
            if d.name in commit.tree:
                builder.insert(d.name, commit.tree[d.name].id, pygit2.enums.FileMode.TREE)
            elif builder.get(d.name) is not None:
                builder.remove(d.name)
            tree = builder.write()
            base = str(repo.create_commit(None, commit.author, commit.committer, commit.message, tree, [base]))
        repo.references.create(self._state_ref, base, force=True)
        repo.references.create(self._pushed_ref, remote, force=True)
        if self.log is not None:
            self.log(f"[{d.name}] the state branch moved in other deployments' directories only: continued on top")
        return True

    def _push(self, record: Run) -> None:
        d = self.deployment
        local, pushed = self._local(self._state_ref), self._local(self._pushed_ref)
        if local is None or local == pushed:
            return
        started = time.monotonic()
        failpoints.hit("push")
        refused = self.state_cache.push(d.state_url, local, self._state_ref, pushed)
        for _ in range(SHARED_RETRIES):  # another deployment sharing the branch pushed in between: on top of it
            remote = remote_ref(d.state_url, self._state_ref) if refused is not None else None
            if remote is None or not self._take_others(remote):
                break
            local, pushed = self._local(self._state_ref), self._local(self._pushed_ref)
            assert local is not None
            record.state_commit = local  # replayed on top of the others' commits
            refused = self.state_cache.push(d.state_url, local, self._state_ref, pushed)
        self._timed(record, "push", started)
        if refused is not None:
            message = (
                f"Pushing the state branch {d.state_branch!r} was refused ({refused}): another writer exists. Find"
                f" and stop it, then run `nixgitops resume {d.name} --adopt-remote-state`."
            )
            self._flag(self.stall_flag, message)
            raise Stop("conflict", message)
        failpoints.hit("pushed")
        self.state_cache.repo.references.create(self._pushed_ref, local, force=True)

    def _check_history(self, head: str) -> None:
        d = self.deployment
        if self._local(self._state_ref) is None:
            return
        meta = StateBranch(self.state_cache.repo, branch=d.state_branch, deployment=d.name).load_meta()
        applied = meta.get("lastAppliedCommit")
        if not applied or applied == head or d.allow_rewind:
            return
        if not self.source.has(applied) or not self.source.descends(head, applied):
            raise Stop(
                "rejected",
                f"The branch {d.branch!r} is now at {head[:12]}, which does not descend from the last applied commit"
                f" {applied[:12]} (a force-push back, or unrelated history). Nothing was applied. Push a commit on top"
                f" of {applied[:12]}, or set allow_rewind = true for deployment {d.name!r}.",
            )

    def _verify(self, head: str) -> None:
        verify = self.deployment.verify
        if verify is None:
            return
        argv = ["git", "--git-dir", str(self.source.directory)]
        env = dict(os.environ)
        if verify.allowed_signers is not None:
            argv += ["-c", f"gpg.ssh.allowedSignersFile={verify.allowed_signers}"]
        if verify.gpg_home is not None:
            env["GNUPGHOME"] = str(verify.gpg_home)
        try:
            done = run([*argv, "verify-commit", head], env=env, check=False, timeout=60)
        except CommandFailed as exc:
            raise Stop("unverified", f"Could not verify commit {head}: {exc}") from None
        if done.returncode != 0:
            why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no signature"
            raise Stop(
                "unverified",
                f"Commit {head} on {self.deployment.branch!r} is not signed by a trusted key ({why}). Nothing was"
                " applied; push a commit signed by a key in the configured allowed signers or keyring.",
            )
