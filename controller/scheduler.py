"""When reconciles run: APScheduler drives one job per deployment.

Each deployment is reconciled at start, then every ``interval`` (with jitter), and at once when asked
(``reconcile_now``: a webhook or an operator). Runs of one deployment never overlap (``max_instances=1``,
plus a pending flag, so a request that arrives during a run is taken right after it: never lost, never run
twice); different deployments run in parallel on their own threads, so one's failures never delay another's.
A run that failed transiently is retried with exponential backoff, capped at the interval.
"""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from controller.reconciler import Reconciler, Run
from webhooks import Delivery
from webhooks.forge import PullRequest

BACKOFF_START = 1.0


class Runner:
    """The scheduling state of one deployment."""

    def __init__(self, reconciler: Reconciler, scheduler: BackgroundScheduler) -> None:
        self.reconciler = reconciler
        self.scheduler = scheduler
        self.name = reconciler.deployment.name
        self._lock = threading.Lock()
        self._running = False
        self._pending = False
        self._force = False
        self._queued = False  # a one-shot job is waiting to start
        self.failures = 0
        self.runs = 0
        self.finished = threading.Condition()
        self.listeners: set[Callable[[], None]] = set()  # called (on the run's thread) after each run

    def tick(self) -> None:
        """The job: run, and run again while requests arrived during the run."""
        with self._lock:
            self._queued = False
            if self._running:
                self._pending = True
                return
            self._running = True
        try:
            while True:
                with self._lock:
                    force, self._force, self._pending = self._force, False, False
                record = self.reconciler.reconcile(force=force)
                self._after(record)
                self.poll_previews()
                with self._lock:
                    if not self._pending:
                        self._running = False
                        break
        finally:
            with self._lock:
                self._running = False
            with self.finished:
                self.runs += 1
                self.finished.notify_all()
            for listener in list(self.listeners):
                listener()

    def _after(self, record: Run) -> None:
        if record.retry:
            self.failures += 1
            delay = min(BACKOFF_START * 2 ** (self.failures - 1), self.reconciler.deployment.interval)
            when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=delay)
            self.scheduler.modify_job(self.name, next_run_time=when)
        else:
            self.failures = 0

    def poll_previews(self) -> None:
        """The fallback of pull-request webhooks, after each run (the first at start-up): preview every open pull
        request whose head has none yet."""
        previews = self.reconciler.previews
        if previews is None:
            return
        for pr in previews.poll():
            self.preview(pr, asked=True)

    def preview(self, pr: PullRequest, *, asked: bool = False) -> bool:
        """Queue a preview of ``pr`` (a newer head of it supersedes a preview still queued or running); False when
        this deployment does not preview it."""
        previews = self.reconciler.previews
        if previews is None or not (asked or previews.ask(pr)):
            return False
        self.scheduler.add_job(
            previews.run,
            args=[pr],
            id=f"{self.name}:preview:{pr.number}:{uuid.uuid4().hex}",
            executor="previews",
            misfire_grace_time=None,
        )
        return True

    def reconcile_now(self, *, force: bool = True) -> None:
        """Run as soon as possible: now, or right after the run in progress."""
        with self._lock:
            self._pending = True
            self._force = self._force or force
            if self._running or self._queued:
                return  # the run in progress, or the one about to start, takes it
            self._queued = True
        # A one-shot job of its own: the interval job may still count as running for a moment after its loop
        # ended, and APScheduler would skip a second start of it.
        self.scheduler.add_job(self.tick, id=f"{self.name}:now:{uuid.uuid4().hex}", misfire_grace_time=None)


class Scheduler:
    """All deployments' jobs."""

    def __init__(self, reconcilers: list[Reconciler]) -> None:
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(1, len(reconcilers))), "previews": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=datetime.UTC,
        )
        self.runners = {r.deployment.name: Runner(r, self.scheduler) for r in reconcilers}
        now = datetime.datetime.now(datetime.UTC)
        for name, runner in self.runners.items():
            d = runner.reconciler.deployment
            self.scheduler.add_job(
                runner.tick,
                IntervalTrigger(seconds=d.interval, jitter=d.jitter, timezone=datetime.UTC),
                id=name,
                name=f"reconcile {name}",
                next_run_time=now,
            )

    def start(self) -> None:
        self.scheduler.start()

    def reconcile_now(self, name: str) -> None:
        self.runners[name].reconcile_now()

    def preview(self, name: str, pr: PullRequest) -> bool:
        return self.runners[name].preview(pr)

    def preview_delivery(self, name: str, delivery: Delivery) -> bool:
        """A verified pull-request webhook for deployment ``name``: queue its preview (the server's hook; it must
        only queue and return)."""
        if delivery.number is None or delivery.head_sha is None or delivery.base_branch is None:
            return False
        if delivery.head_ref is None:
            return False
        d = delivery
        pr = PullRequest(d.number, d.head_sha, d.base_branch, d.head_ref, d.from_fork)  # type: ignore[arg-type]
        return self.preview(name, pr)

    def preview_closed(self, name: str, delivery: Delivery) -> bool:
        """A pull request was closed: a preview of it still queued or running shows nothing."""
        previews = self.runners[name].reconciler.previews
        if previews is None or delivery.number is None:
            return False
        return previews.closed(delivery.number)

    def stop(self, wait: bool = True) -> None:
        self.scheduler.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)
