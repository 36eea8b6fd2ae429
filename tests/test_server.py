"""The HTTP app, driven in-process with FastAPI's test client and small fakes of our own scheduler."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.config import parse
from controller.errors import UserError
from controller.metrics import Metrics
from controller.reconciler import Run
from controller.server import create_app
from webhooks.base import hmac_sha256

SECRET = b"webhook-secret"


@dataclass
class FakeReconciler:
    deployment: Any
    reached: bool = True
    suspended: bool = False
    history: list[Run] = field(default_factory=list)
    last: Run | None = None

    def status(self) -> dict[str, Any]:
        return {"deployment": self.deployment.name, "lastRun": {"outcome": "success"}}

    def stalled(self) -> str | None:
        return None

    def last_plan(self) -> dict[str, Any] | None:
        return None

    def resources(self) -> list[dict[str, Any]]:
        return []

    def preview_book(self) -> dict[str, Any]:
        return {}

    def approve(self, commit: str) -> str:
        if len(commit) < 4 or any(c not in "0123456789abcdef" for c in commit):
            raise UserError(f"No commit {commit!r} in the cache of deployment {self.deployment.name!r}.")
        return commit


@dataclass
class FakeRunner:
    reconciler: FakeReconciler
    runs: int = 0
    finished: threading.Condition = field(default_factory=threading.Condition)
    listeners: set[Callable[[], None]] = field(default_factory=set)


class FakeScheduler:
    def __init__(self, config: Any) -> None:
        self.runners = {n: FakeRunner(FakeReconciler(d)) for n, d in config.deployments.items()}
        self.requests: list[str] = []
        self.running = True

    def reconcile_now(self, name: str) -> None:
        self.requests.append(name)
        runner = self.runners[name]
        with runner.finished:  # as if the run happened at once
            runner.reconciler.last = Run(name, "no-change")
            runner.runs += 1
            runner.finished.notify_all()
        for listener in list(runner.listeners):
            listener()


def make_config(tmp_path: Path) -> Any:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    return parse(
        {
            "controller": {"data_dir": str(tmp_path)},
            "deployments": {
                "web": {"repository": "git@example.org:team/infra.git", "branch": "main"},
                "other": {"repository": "https://example.org/team/other.git"},
            },
            "receivers": {"gh": {"kind": "github", "secret_file": str(secret), "deployments": ["web", "other"]}},
        },
        tmp_path / "nixgitops.toml",
    )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TestClient, FakeScheduler, Metrics]:
    config = make_config(tmp_path)
    scheduler = FakeScheduler(config)
    metrics = Metrics()
    return TestClient(create_app(config, scheduler, metrics)), scheduler, metrics  # type: ignore[arg-type]


def push(ref: str = "refs/heads/main", repo: str = "https://example.org/team/infra.git") -> bytes:
    return json.dumps({"ref": ref, "after": "b" * 40, "repository": {"clone_url": repo}}).encode()


def github(body: bytes, delivery: str = "1", event: str = "push", secret: bytes = SECRET) -> dict[str, str]:
    return {
        "X-Hub-Signature-256": "sha256=" + hmac_sha256(secret, body),
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "Content-Type": "application/json",
    }


def test_a_verified_push_triggers_only_the_matching_deployment(setup: Any) -> None:
    client, scheduler, _ = setup
    body = push()
    response = client.post("/hooks/gh", content=body, headers=github(body))
    assert response.status_code == 202 and response.json() == {"result": "triggered", "deployments": ["web"]}
    assert scheduler.requests == ["web"]


def test_other_branches_events_and_redeliveries_trigger_nothing(setup: Any) -> None:
    client, scheduler, metrics = setup
    body = push("refs/heads/feature")
    assert client.post("/hooks/gh", content=body, headers=github(body, "2")).json()["result"] == "ignored"
    tag = push("refs/tags/v1")
    assert client.post("/hooks/gh", content=tag, headers=github(tag, "3")).json()["result"] == "ignored"
    assert client.post("/hooks/gh", content=b"{}", headers=github(b"{}", "4", "issues")).json()["result"] == "ignored"
    assert client.post("/hooks/gh", content=b"{}", headers=github(b"{}", "5", "ping")).json()["result"] == "ping"
    good = push()
    assert client.post("/hooks/gh", content=good, headers=github(good, "6")).json()["result"] == "triggered"
    again = client.post("/hooks/gh", content=good, headers=github(good, "6"))
    assert again.status_code == 202 and again.json()["result"] == "duplicate"
    assert scheduler.requests == ["web"]
    text = metrics.exposition().decode()
    assert 'nixgitops_webhook_requests_total{receiver="gh",result="duplicate"} 1.0' in text


def test_bad_signatures_oversized_and_malformed_bodies(setup: Any) -> None:
    client, scheduler, _ = setup
    body = push()
    assert client.post("/hooks/gh", content=body, headers=github(body, secret=b"wrong")).status_code == 401
    assert client.post("/hooks/gh", content=body, headers={"X-GitHub-Event": "push"}).status_code == 401
    big = b"{" + b" " * (1024 * 1024) + b"}"
    assert client.post("/hooks/gh", content=big, headers=github(big)).status_code == 413
    assert client.post("/hooks/gh", content=b"nope", headers=github(b"nope")).status_code == 400
    assert client.post("/hooks/nobody", content=body, headers=github(body)).status_code == 404
    assert scheduler.requests == []


def test_health_readiness_and_status_api(setup: Any) -> None:
    client, scheduler, _ = setup
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    scheduler.runners["web"].reconciler.reached = False
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["sourcesNotReached"] == ["web"]
    listed = client.get("/api/v1/deployments").json()
    assert [d["deployment"] for d in listed] == ["other", "web"]
    assert client.get("/api/v1/deployments/nope").status_code == 404
    assert client.get("/api/v1/deployments/web/plan").status_code == 404
    spec = client.get("/openapi.json").json()
    assert "/api/v1/deployments/{name}" in spec["paths"]


def test_metrics_pass_promtool(setup: Any) -> None:
    client, _, metrics = setup
    metrics.run("web", "success", 1.0, {"fetch": 0.1, "plan": 0.2}, {"create": 1}, {"local.file": 2}, "c" * 40, False)
    metrics.operation("web", "local", "create", "ok", 0.01)
    metrics.drift.labels("web").set(0)
    text = client.get("/metrics").text
    for name in (
        "nixgitops_reconcile_total",
        "nixgitops_reconcile_duration_seconds_bucket",
        "nixgitops_last_reconcile_timestamp_seconds",
        "nixgitops_applied_commit_info",
        "nixgitops_resources",
        "nixgitops_plan_changes",
        "nixgitops_resource_operations_total",
        "nixgitops_resource_operation_duration_seconds_bucket",
        "nixgitops_suspended",
        "nixgitops_drift_resources",
        "process_cpu_seconds_total",
    ):
        assert name in text, name
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus package)")
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_api_can_require_a_bearer_token(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    guarded = TestClient(create_app(config, FakeScheduler(config), Metrics(), token="t0k"))  # type: ignore[arg-type]
    assert guarded.get("/api/v1/deployments").status_code == 401
    assert guarded.get("/api/v1/deployments", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/api/v1/deployments", headers={"Authorization": "Bearer t0k"}).status_code == 200
    assert guarded.get("/healthz").status_code == 200, "probes never need the token"


def test_resource_counts_forget_types_that_are_gone() -> None:
    metrics = Metrics()
    metrics.run("web", "success", 1.0, {}, None, {"local.file": 2, "local.memo": 1}, None, False)
    metrics.run("web", "success", 2.0, {}, None, {"local.file": 1}, None, False)
    text = metrics.exposition().decode()
    assert 'nixgitops_resources{deployment="web",type="local.file"} 1.0' in text
    assert "local.memo" not in text


def test_suspended_deployments_do_not_hold_readiness_and_show_at_scrape(setup: Any) -> None:
    client, scheduler, _ = setup
    reconciler = scheduler.runners["web"].reconciler
    reconciler.reached = False
    reconciler.suspended = True
    assert client.get("/readyz").status_code == 200
    assert 'nixgitops_suspended{deployment="web"} 1.0' in client.get("/metrics").text
