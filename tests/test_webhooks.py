"""Webhook verification and parsing, per forge, driven with bytes."""

from __future__ import annotations

import json

import pytest

from webhooks import KINDS, Rejected, receive, same_repository
from webhooks.base import hmac_sha256

SECRET = b"s3cret"


def test_github_documented_example_signature() -> None:
    # The example of GitHub's "Validating webhook deliveries" page.
    signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert "sha256=" + hmac_sha256(b"It's a Secret to Everybody", b"Hello, World!") == signature


def signed(kind: str, body: bytes, event: str | None = None) -> dict[str, str]:
    digest = hmac_sha256(SECRET, body)
    return {
        "github": {
            "X-Hub-Signature-256": "sha256=" + digest,
            "X-GitHub-Event": event or "push",
            "X-GitHub-Delivery": "d1",
        },
        "gitea": {"X-Gitea-Signature": digest, "X-Gitea-Event": event or "push", "X-Gitea-Delivery": "d1"},
        "gitlab": {
            "X-Gitlab-Token": SECRET.decode(),
            "X-Gitlab-Event": event or "Push Hook",
            "X-Gitlab-Event-UUID": "d1",
        },
        "bitbucket-server": {
            "X-Hub-Signature": "sha256=" + digest,
            "X-Event-Key": event or "repo:refs_changed",
            "X-Request-Id": "d1",
        },
        "generic-hmac": {"X-Signature": "sha256=" + digest, "X-Delivery-Id": "d1"},
    }[kind]


PAYLOADS = {
    "github": {"ref": "refs/heads/main", "after": "a" * 40, "repository": {"clone_url": "https://example.org/o/r.git"}},
    "gitea": {"ref": "refs/heads/main", "after": "a" * 40, "repository": {"clone_url": "https://example.org/o/r.git"}},
    "gitlab": {"ref": "refs/heads/main", "after": "a" * 40, "project": {"git_http_url": "https://example.org/o/r.git"}},
    "bitbucket-server": {
        "changes": [{"ref": {"id": "refs/heads/main"}, "toHash": "a" * 40}],
        "repository": {"links": {"clone": [{"href": "https://example.org/o/r.git", "name": "http"}]}},
    },
    "generic-hmac": {"repository": "https://example.org/o/r.git", "ref": "refs/heads/main", "after": "a" * 40},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_signed_push_is_parsed(kind: str) -> None:
    body = json.dumps(PAYLOADS[kind]).encode()
    delivery = receive(kind, signed(kind, body), body, SECRET)
    assert delivery.event == "push" and delivery.ref == "refs/heads/main" and delivery.after == "a" * 40
    assert delivery.delivery_id == "d1"
    assert same_repository("git@example.org:o/r.git", delivery.repositories)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bad_or_missing_signatures_are_401(kind: str) -> None:
    body = json.dumps(PAYLOADS[kind]).encode()
    headers = signed(kind, body)
    with pytest.raises(Rejected) as error:
        receive(kind, headers, body + b" ", SECRET) if kind != "gitlab" else receive(kind, headers, body, b"other")
    assert error.value.status == 401
    with pytest.raises(Rejected) as missing:
        receive(kind, {}, body, SECRET)
    assert missing.value.status == 401


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_malformed_bodies_are_400(kind: str) -> None:
    body = b"not json"
    with pytest.raises(Rejected) as error:
        receive(kind, signed(kind, body), body, SECRET)
    assert error.value.status == 400


@pytest.mark.parametrize(("kind", "event"), [("github", "ping"), ("bitbucket-server", "diagnostics:ping")])
def test_pings(kind: str, event: str) -> None:
    body = b"{}"
    assert receive(kind, signed(kind, body, event), body, SECRET).event == "ping"


def test_other_events_are_not_pushes() -> None:
    body = b"{}"
    assert receive("github", signed("github", body, "issues"), body, SECRET).event == "issues"
    assert receive("gitlab", signed("gitlab", body, "Tag Push Hook"), body, SECRET).event == "Tag Push Hook"


@pytest.mark.parametrize(
    ("configured", "announced", "same"),
    [
        ("ssh://git@example.org/o/r.git", "https://example.org/o/r", True),
        ("git@example.org:o/r.git", "https://EXAMPLE.org/o/r.git", True),
        ("https://example.org:8443/o/r/", "git://example.org/o/r.git", True),
        ("https://example.org/o/r.git", "https://example.org/o/other.git", False),
        ("/srv/git/r.git", "/srv/git/r", True),
    ],
)
def test_repository_urls_match_across_protocols(configured: str, announced: str, same: bool) -> None:
    assert same_repository(configured, (announced,)) is same


def test_bitbucket_odd_shapes_are_400_and_every_changed_ref_counts() -> None:
    for data in (
        {"changes": [{}], "repository": "x"},
        {"changes": [{}], "repository": {"links": None}},
        {"changes": ["x"]},
    ):
        body = json.dumps(data).encode()
        try:
            delivery = receive("bitbucket-server", signed("bitbucket-server", body), body, SECRET)
        except Rejected as error:
            assert error.status == 400
        else:
            assert delivery.repositories == ()
    body = json.dumps(
        {
            "changes": [{"ref": {"id": "refs/tags/v1"}}, {"ref": {"id": "refs/heads/main"}, "toHash": "c" * 40}],
            "repository": {"links": {"clone": [{"href": "https://example.org/o/r.git"}]}},
        }
    ).encode()
    delivery = receive("bitbucket-server", signed("bitbucket-server", body), body, SECRET)
    assert "refs/heads/main" in delivery.moved


@pytest.mark.parametrize("kind", ["github", "gitea", "gitlab"])
def test_a_push_without_a_ref_is_malformed(kind: str) -> None:
    body = b"{}"
    with pytest.raises(Rejected) as error:
        receive(kind, signed(kind, body), body, SECRET)
    assert error.value.status == 400


def test_github_receive_accepts_the_documented_signature() -> None:
    headers = {
        "X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "X-GitHub-Event": "zen",
    }
    with pytest.raises(Rejected) as error:  # verified, then refused only because the body is not JSON
        receive("github", headers, b"Hello, World!", b"It's a Secret to Everybody")
    assert error.value.status == 400


def test_gitlab_retries_are_recognised_by_their_idempotency_key() -> None:
    body = json.dumps(PAYLOADS["gitlab"]).encode()
    headers = {**signed("gitlab", body), "Idempotency-Key": "retry-1"}
    assert receive("gitlab", headers, body, SECRET).delivery_id == "retry-1"
