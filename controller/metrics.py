"""Prometheus metrics (prefix ``nixgitops_``), filled in by the code paths that do the work.

Every metric is listed with its labels and meaning in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

PHASE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """One registry per controller (tests make their own)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.reconcile = Counter(
            "nixgitops_reconcile", "Reconcile runs by outcome.", ["deployment", "result"], registry=r
        )
        self.duration = Histogram(
            "nixgitops_reconcile_duration_seconds",
            "Time spent in each phase of a reconcile (fetch, plan, apply, push).",
            ["deployment", "phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.last = Gauge(
            "nixgitops_last_reconcile_timestamp_seconds",
            "Unix time of the last reconcile with this outcome.",
            ["deployment", "result"],
            registry=r,
        )
        self.applied = Gauge(
            "nixgitops_applied_commit_info",
            "The source commit last applied (value 1).",
            ["deployment", "commit"],
            registry=r,
        )
        self.resources = Gauge(
            "nixgitops_resources", "Resources in state, by type.", ["deployment", "type"], registry=r
        )
        self.plan_changes = Gauge(
            "nixgitops_plan_changes", "Changes in the last plan, by action.", ["deployment", "action"], registry=r
        )
        self.operations = Counter(
            "nixgitops_resource_operations",
            "Provider operations by outcome.",
            ["deployment", "provider", "operation", "result"],
            registry=r,
        )
        self.operation_duration = Histogram(
            "nixgitops_resource_operation_duration_seconds",
            "Time a provider took for one operation.",
            ["deployment", "provider", "operation"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.webhooks = Counter(
            "nixgitops_webhook_requests",
            "Webhook requests by outcome (triggered, ignored, duplicate, ping, unauthorized, malformed, too_large,"
            " unknown_receiver).",
            ["receiver", "result"],
            registry=r,
        )
        self.fetch_errors = Counter(
            "nixgitops_source_fetch_errors",
            "Failed attempts to reach a source or state remote.",
            ["deployment"],
            registry=r,
        )
        self.drift = Gauge(
            "nixgitops_drift_resources",
            "Resources whose real state no longer matches what was applied, at the last drift check.",
            ["deployment"],
            registry=r,
        )
        self.previews = Counter(
            "nixgitops_previews",
            "Previews of pull requests by outcome (success, failure, superseded, skipped-fork).",
            ["deployment", "result"],
            registry=r,
        )
        self.forge_requests = Counter(
            "nixgitops_forge_requests",
            "Calls to a forge's API (a status, a comment, a listing; retries included) by outcome (ok, error).",
            ["forge", "result"],
            registry=r,
        )
        self.suspended = Gauge(
            "nixgitops_suspended", "1 while the deployment is suspended.", ["deployment"], registry=r
        )
        self._applied: dict[str, str] = {}
        self._types: dict[str, set[str]] = {}

    def run(
        self,
        deployment: str,
        outcome: str,
        timestamp: float,
        phases: Mapping[str, float],
        plan: Mapping[str, int] | None,
        resources: Mapping[str, int] | None,
        applied: str | None,
        suspended: bool,
    ) -> None:
        """Record one finished reconcile."""
        self.reconcile.labels(deployment, outcome).inc()
        self.last.labels(deployment, outcome).set(timestamp)
        for phase, seconds in phases.items():
            self.duration.labels(deployment, phase).observe(seconds)
        if outcome == "unavailable":
            self.fetch_errors.labels(deployment).inc()
        if plan is not None:
            for action, count in plan.items():
                self.plan_changes.labels(deployment, action).set(count)
        if resources is not None:
            for gone in self._types.get(deployment, set()) - set(resources):
                self.resources.remove(deployment, gone)
            for rtype, count in resources.items():
                self.resources.labels(deployment, rtype).set(count)
            self._types[deployment] = set(resources)
        if applied and self._applied.get(deployment) != applied:
            old = self._applied.get(deployment)
            if old is not None:
                self.applied.remove(deployment, old)
            self.applied.labels(deployment, applied).set(1)
            self._applied[deployment] = applied
        self.suspended.labels(deployment).set(1 if suspended else 0)

    def operation(self, deployment: str, provider: str, operation: str, result: str, seconds: float) -> None:
        self.operations.labels(deployment, provider, operation, result).inc()
        if result == "ok":
            self.operation_duration.labels(deployment, provider, operation).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
