"""Hostile webhook traffic, generated: random headers, bodies, signatures and sizes at every receiver kind. No
request gets a 5xx, nothing is triggered (no reconcile, no preview) without a valid signature or token, and the
handlers keep no memory. Pull request payloads are generated too, and real deliveries (tests/webhook_payloads)
are mutated at random places."""

from __future__ import annotations

import hashlib
import hmac
import json
import tracemalloc
from dataclasses import replace
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
from webhooks import Delivery

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
    "X-GitHub-Event": ["push", "ping", "issues", "pull_request"],
    "X-Gitlab-Event": ["Push Hook", "System Hook", "Merge Request Hook"],
    "X-Gitea-Event": ["push", "pull_request"],
    "X-Forgejo-Event": ["push", "pull_request"],
    "X-Event-Key": [
        "repo:refs_changed",
        "diagnostics:ping",
        "pr:opened",
        "pr:from_ref_updated",
        "pr:modified",
        "pr:merged",
        "pr:comment:added",
    ],
}
KIND_EVENTS = {
    "github": ("X-GitHub-Event", EVENT_HEADERS["X-GitHub-Event"]),
    "gitlab": ("X-Gitlab-Event", EVENT_HEADERS["X-Gitlab-Event"]),
    "gitea": ("X-Gitea-Event", EVENT_HEADERS["X-Gitea-Event"]),
    "bitbucket-server": ("X-Event-Key", EVENT_HEADERS["X-Event-Key"]),
    "generic-hmac": ("X-Ignored", [""]),
}
PREVIEWS: list[tuple[str, Delivery]] = []


def record(name: str, delivery: Delivery) -> bool:
    PREVIEWS.append((name, delivery))
    return True


def server(tmp: Path) -> tuple[TestClient, FakeScheduler]:
    """The real server and receivers (one of each kind, all for deployment "web", which previews pull requests,
    also from forks), with a fake scheduler; previews asked for are appended to PREVIEWS."""
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
    web = replace(config.deployments["web"], previews=True, previews_from_forks=True)
    config = replace(config, deployments={"web": web})
    scheduler = FakeScheduler(config)
    app = create_app(config, scheduler, Metrics(), preview=record, preview_closed=record)  # type: ignore[arg-type]
    return TestClient(app), scheduler


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
maybe = json_values | st.text(max_size=45)
repo_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers(0, 3) | maybe,
        "clone_url": st.just("https://example.org/team/infra.git") | maybe,
        "git_http_url": st.just("https://example.org/team/infra.git") | maybe,
        "slug": st.just("infra") | maybe,
        "project": st.fixed_dictionaries({}, optional={"key": st.just("TEAM") | maybe}) | maybe,
        "links": st.fixed_dictionaries({}, optional={"clone": st.lists(st.fixed_dictionaries({"href": maybe}))})
        | maybe,
    },
)
side_like = st.fixed_dictionaries(
    {},
    optional={
        "ref": st.just("main") | maybe,
        "id": st.just("refs/heads/main") | maybe,
        "displayId": st.just("main") | maybe,
        "sha": st.just("a" * 40) | maybe,
        "latestCommit": st.just("b" * 40) | maybe,
        "repo": repo_like | maybe,
        "repository": repo_like | maybe,
        "repo_id": st.integers(0, 3) | maybe,
    },
)
pull_request_like = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["opened", "synchronize", "synchronized", "reopened", "closed", "edited"]) | maybe,
        "number": st.integers(-1, 3) | maybe,
        "repository": repo_like | maybe,
        "changes": st.fixed_dictionaries({}, optional={"base": maybe, "ref": maybe, "target_branch": maybe}) | maybe,
        "previousTarget": side_like | maybe,
        "pull_request": st.fixed_dictionaries(
            {}, optional={"number": st.integers(0, 3) | maybe, "head": side_like | maybe, "base": side_like | maybe}
        )
        | maybe,
        "pullRequest": st.fixed_dictionaries(
            {}, optional={"id": st.integers(0, 3) | maybe, "fromRef": side_like | maybe, "toRef": side_like | maybe}
        )
        | maybe,
        "project": repo_like | maybe,
        "object_attributes": st.fixed_dictionaries(
            {},
            optional={
                "action": st.sampled_from(["open", "reopen", "update", "close", "merge", "approved"]) | maybe,
                "iid": st.integers(0, 3) | maybe,
                "oldrev": maybe,
                "target_branch": st.just("main") | maybe,
                "last_commit": st.fixed_dictionaries({}, optional={"id": st.just("c" * 40) | maybe}) | maybe,
                "source": repo_like | maybe,
                "target": repo_like | maybe,
                "source_project_id": st.integers(0, 3) | maybe,
                "target_project_id": st.integers(0, 3) | maybe,
            },
        )
        | maybe,
    },
)
bodies = (
    st.binary(max_size=2048)
    | json_values.map(lambda v: json.dumps(v).encode())
    | push_like.map(lambda v: json.dumps(v).encode())
    | pull_request_like.map(lambda v: json.dumps(v).encode())
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
@given(
    kind=st.sampled_from(KINDS),
    body=bodies,
    extra=headers,
    event=st.sampled_from(sorted(EVENT_HEADERS)),
    data=st.data(),
)
def test_unsigned_traffic_never_triggers_and_never_errors(
    world: tuple[TestClient, FakeScheduler],
    kind: str,
    body: bytes,
    extra: dict[str, str],
    event: str,
    data: st.DataObject,
) -> None:
    client, scheduler = world
    before, previews = len(scheduler.requests), len(PREVIEWS)
    sent = {**extra, event: data.draw(st.sampled_from(EVENT_HEADERS[event]))}
    response = client.post(f"/hooks/{kind}", content=body, headers=sent)
    assert response.status_code < 500, response.text
    assert len(scheduler.requests) == before, f"triggered without a valid signature: {sent}"
    assert len(PREVIEWS) == previews, f"a preview without a valid signature: {sent}"
    assert SECRET.decode() not in response.text


def sign(kind: str, body: bytes, event: str | None = None) -> dict[str, str]:
    digest = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    header, events = KIND_EVENTS[kind]
    return {
        "github": {"X-Hub-Signature-256": f"sha256={digest}"},
        "gitlab": {"X-Gitlab-Token": SECRET.decode()},
        "gitea": {"X-Gitea-Signature": digest},
        "bitbucket-server": {"X-Hub-Signature": f"sha256={digest}"},
        "generic-hmac": {"X-Signature": f"sha256={digest}"},
    }[kind] | {header: event if event is not None else events[0]}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(KINDS), body=bodies, data=st.data())
def test_signed_garbage_is_a_4xx_not_a_5xx(
    world: tuple[TestClient, FakeScheduler], kind: str, body: bytes, data: st.DataObject
) -> None:
    client, _ = world
    event = data.draw(st.sampled_from(KIND_EVENTS[kind][1]))
    response = client.post(f"/hooks/{kind}", content=body, headers=sign(kind, body, event))
    assert response.status_code < 500, response.text


PAYLOADS = Path(__file__).parent / "webhook_payloads"
REAL = sorted(p for p in PAYLOADS.glob("*/*.json"))
REAL_KIND = {
    "github": "github",
    "gitlab": "gitlab",
    "gitea": "gitea",
    "forgejo": "gitea",
    "bitbucket-server": "bitbucket-server",
}
GITLAB_EVENTS = {"merge_request": "Merge Request Hook", "push": "Push Hook"}


def mutate(value: Any, data: st.DataObject, depth: int = 0) -> Any:
    """The value with one place somewhere inside it replaced (or removed) at random."""
    if isinstance(value, dict) and value and depth < 8:
        key = data.draw(st.sampled_from(sorted(value)))
        copy = dict(value)
        choice = data.draw(st.integers(0, 3))
        if choice == 0:
            del copy[key]
        elif choice == 1:
            copy[key] = data.draw(json_values)
        else:
            copy[key] = mutate(value[key], data, depth + 1)
        return copy
    if isinstance(value, list) and value and depth < 8:
        i = data.draw(st.integers(0, len(value) - 1))
        return [*value[:i], mutate(value[i], data, depth + 1), *value[i + 1 :]]
    return data.draw(json_values)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(REAL), data=st.data())
def test_mutated_real_deliveries_are_never_a_5xx(
    world: tuple[TestClient, FakeScheduler], path: Path, data: st.DataObject
) -> None:
    client, _ = world
    forge, payload = path.parent.name, json.loads(path.read_bytes())
    event = path.name.split(".")[0]
    if forge == "gitlab":
        event = GITLAB_EVENTS[event]
    elif forge == "bitbucket-server":
        event = payload.get("eventKey") or "diagnostics:ping"
    body = json.dumps(mutate(payload, data)).encode()
    kind = REAL_KIND[forge]
    response = client.post(f"/hooks/{kind}", content=body, headers=sign(kind, body, event))
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
    pull = json.dumps(
        {
            "action": "synchronize",
            "number": 7,
            "pull_request": {
                "head": {"sha": "c" * 40, "ref": "topic", "repo": {"id": 1}},
                "base": {"ref": "main", "repo": {"id": 1, "clone_url": "https://example.org/team/infra.git"}},
            },
        }
    ).encode()
    before = len(PREVIEWS)
    previewed = client.post("/hooks/github", content=pull, headers=sign("github", pull, "pull_request"))
    assert previewed.json() == {"result": "preview", "deployments": ["web"]}
    assert [(name, d.number, d.head_sha) for name, d in PREVIEWS[before:]] == [("web", 7, "c" * 40)]
