"""Scheduling with the real APScheduler and a small fake of our own Reconciler."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from controller.reconciler import Run
from controller.scheduler import Scheduler


@dataclass
class FakeDeployment:
    name: str
    interval: float = 3600.0
    jitter: float = 0.001


class FakeReconciler:
    def __init__(self, name: str, outcome: str = "success") -> None:
        self.deployment = FakeDeployment(name)
        self.outcome = outcome
        self.calls: list[bool] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.previews = None  # no forge: no pull-request previews

    def reconcile(self, *, force: bool = False) -> Run:
        self.calls.append(force)
        self.entered.set()
        assert self.gate.wait(30)
        return Run(self.deployment.name, self.outcome)


def wait_runs(scheduler: Scheduler, name: str, count: int) -> None:
    runner = scheduler.runners[name]
    with runner.finished:
        assert runner.finished.wait_for(lambda: runner.runs >= count, timeout=30)


def test_requests_during_a_run_coalesce_into_one_more_run() -> None:
    web = FakeReconciler("web")
    web.gate.clear()
    scheduler = Scheduler([web])  # type: ignore[list-item]
    scheduler.start()
    try:
        assert web.entered.wait(30), "the first run starts at once"
        for _ in range(5):
            scheduler.reconcile_now("web")
        web.gate.set()
        wait_runs(scheduler, "web", 1)
        assert web.calls == [False, True], "one more run, forced, for the five requests"
    finally:
        scheduler.stop()


def test_a_request_when_idle_runs_now() -> None:
    web = FakeReconciler("web")
    scheduler = Scheduler([web])  # type: ignore[list-item]
    scheduler.start()
    try:
        wait_runs(scheduler, "web", 1)
        scheduler.reconcile_now("web")
        wait_runs(scheduler, "web", 2)
        assert web.calls == [False, True]
    finally:
        scheduler.stop()


def test_deployments_run_in_parallel_and_failures_back_off() -> None:
    slow, other = FakeReconciler("slow"), FakeReconciler("other", outcome="unavailable")
    slow.gate.clear()
    scheduler = Scheduler([slow, other])  # type: ignore[list-item]
    scheduler.start()
    try:
        wait_runs(scheduler, "other", 2)  # retried by backoff while slow is still in its first run
        assert slow.calls == [False] and scheduler.runners["other"].failures >= 2
    finally:
        slow.gate.set()
        scheduler.stop()


def test_a_burst_of_requests_while_idle_gives_one_run() -> None:
    web = FakeReconciler("web")
    scheduler = Scheduler([web])  # type: ignore[list-item]
    scheduler.start()
    try:
        wait_runs(scheduler, "web", 1)
        web.gate.clear()
        for _ in range(20):
            scheduler.reconcile_now("web")
        assert web.entered.wait(30)
        web.gate.set()
        wait_runs(scheduler, "web", 2)
        runner = scheduler.runners["web"]
        with runner.finished:  # nothing more is queued
            assert not runner.finished.wait_for(lambda: runner.runs > 2, timeout=1)
        assert len(web.calls) == 2
    finally:
        scheduler.stop()
