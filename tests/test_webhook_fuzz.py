"""Hostile webhook traffic, generated: random headers, bodies, signatures and sizes at every receiver kind. No
request gets a 5xx, nothing is triggered without a valid signature or token, and the handlers keep no memory."""

from __future__ import annotations

import hashlib
import hmac
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server import FakeScheduler

from controller.config import parse
from controller.metrics import Metrics
from controller.server import create_app

SECRET = b"fuzz-secret-8d1e"
KINDS = ("github", "gitlab", "gitea", "bitbucket-server", "generic-hmac")
SIGNATURE_HEADERS = (
    "X-Hub-Signature-256",
    "X-Hub-Signature",
    "X-Gitlab-Token",
    "X-Gitea-Signature",
    "X-Forgejo-Signature",
    "X-Signature",
)
EVENT_HEADERS = {
    "X-GitHub-Event": ["push", "ping", "issues"],
    "X-Gitlab-Event": ["Push Hook", "System Hook"],
    "X-Gitea-Event": ["push"],
    "X-Event-Key": ["repo:refs_changed", "diagnostics:ping"],
}


def server(tmp: Path) -> tuple[TestClient, FakeScheduler]:
    """The real server and receivers (one of each kind, all for deployment "web"), with a fake scheduler."""
    (tmp / "secret").write_bytes(SECRET)
    config = parse(
        {
            "controller": {"data_dir": str(tmp)},
            "deployments": {"web": {"repository": "https://example.org/team/infra.git"}},
            "receivers": {
                kind: {"kind": kind, "secret_file": str(tmp / "secret"), "deployments": ["web"]} for kind in KINDS
            },
        },
        tmp / "nixgitops.toml",
    )
    scheduler = FakeScheduler(config)
    return TestClient(create_app(config, scheduler, Metrics())), scheduler  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestClient, FakeScheduler]:
    return server(tmp_path_factory.mktemp("fuzz"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
push_like = st.fixed_dictionaries(
    {},
    optional={
        "ref": st.sampled_from(["refs/heads/main", "refs/tags/v1", ""]) | st.text(max_size=30),
        "after": st.text(max_size=45),
        "repository": st.dictionaries(
            st.sampled_from(["clone_url", "git_http_url", "html_url", "url"]), json_values, max_size=3
        ),
        "changes": json_values,
        "project": json_values,
    },
)
bodies = (
    st.binary(max_size=2048)
    | json_values.map(lambda v: json.dumps(v).encode())
    | push_like.map(lambda v: json.dumps(v).encode())
    | st.integers(0, 3 * 1024 * 1024).map(lambda n: b"{" + b" " * n + b"}")
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
headers = st.dictionaries(
    st.sampled_from([*SIGNATURE_HEADERS, *EVENT_HEADERS, "Content-Type", "X-GitHub-Delivery", "Idempotency-Key"])
    | st.from_regex(r"\AX-[A-Za-z-]{1,20}\Z"),
    header_values,
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(KINDS), body=bodies, extra=headers, event=st.sampled_from(sorted(EVENT_HEADERS)))
def test_unsigned_traffic_never_triggers_and_never_errors(
    world: tuple[TestClient, FakeScheduler], kind: str, body: bytes, extra: dict[str, str], event: str
) -> None:
    client, scheduler = world
    before = len(scheduler.requests)
    sent = {**extra, event: EVENT_HEADERS[event][0]}
    response = client.post(f"/hooks/{kind}", content=body, headers=sent)
    assert response.status_code < 500, response.text
    assert len(scheduler.requests) == before, f"triggered without a valid signature: {sent}"
    assert SECRET.decode() not in response.text


def sign(kind: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return {
        "github": {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Event": "push"},
        "gitlab": {"X-Gitlab-Token": SECRET.decode(), "X-Gitlab-Event": "Push Hook"},
        "gitea": {"X-Gitea-Signature": digest, "X-Gitea-Event": "push"},
        "bitbucket-server": {"X-Hub-Signature": f"sha256={digest}", "X-Event-Key": "repo:refs_changed"},
        "generic-hmac": {"X-Signature": f"sha256={digest}"},
    }[kind]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(KINDS), body=bodies)
def test_signed_garbage_is_a_4xx_not_a_5xx(world: tuple[TestClient, FakeScheduler], kind: str, body: bytes) -> None:
    client, _ = world
    response = client.post(f"/hooks/{kind}", content=body, headers=sign(kind, body))
    assert response.status_code < 500, response.text


def test_handlers_keep_no_memory(world: tuple[TestClient, FakeScheduler]) -> None:
    """Thousands of rejected and accepted requests: what our code still holds afterwards stays small."""
    client, _ = world
    good = json.dumps(
        {"ref": "refs/heads/main", "after": "a" * 40, "repository": {"clone_url": "https://example.org/x.git"}}
    ).encode()

    def burst(n: int) -> None:
        for i in range(n):
            body = good if i % 2 else b"x" * (i % 4096)
            headers: dict[str, Any] = sign("github", body) if i % 3 else {"X-Hub-Signature-256": "sha256=00"}
            headers["X-GitHub-Delivery"] = f"delivery-{i}"
            client.post("/hooks/github", content=body, headers=headers)

    burst(500)  # warm: caches and first-use allocations
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    burst(3000)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    ours = [tracemalloc.Filter(True, f"*{part}*") for part in ("/controller/", "/webhooks/")]
    growth = sum(s.size_diff for s in after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename"))
    # The delivery ids of the last deliveries are remembered (to answer redeliveries); nothing else should stay.
    assert growth < 512 * 1024, f"{growth} bytes more held by controller/ and webhooks/ after 3,000 requests"


def test_fuzz_config_is_real(tmp_path: Path) -> None:
    """The fixture's receivers are the real ones: a correctly signed push does trigger (so the fuzz can fail)."""
    client, scheduler = server(tmp_path)
    body = json.dumps(
        {"ref": "refs/heads/main", "after": "a" * 40, "repository": {"clone_url": "https://example.org/team/infra.git"}}
    ).encode()
    response = client.post("/hooks/github", content=body, headers=sign("github", body))
    assert response.json()["result"] == "triggered" and scheduler.requests == ["web"]
