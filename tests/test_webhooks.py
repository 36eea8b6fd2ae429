"""Webhook verification and parsing, per forge, driven with bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_server import FakeScheduler

from controller.config import parse
from controller.metrics import Metrics
from controller.server import create_app
from webhooks import (
    KINDS,
    PULL_REQUEST,
    PULL_REQUEST_CLOSED,
    PULL_REQUEST_IGNORED,
    Delivery,
    Rejected,
    receive,
    same_project_slug,
    same_repository,
)
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


# --- Real deliveries, as the forges and their SDKs publish them (tests/webhook_payloads/README.md) ---

PAYLOADS_DIR = Path(__file__).parent / "webhook_payloads"
GITLAB_EVENTS = {"merge_request": "Merge Request Hook", "push": "Push Hook"}


def forge_headers(forge: str, body: bytes, event: str, delivery: str = "d1") -> dict[str, str]:
    """What the forge sends, signed with SECRET (Forgejo: its own header names, received by kind "gitea")."""
    digest = hmac_sha256(SECRET, body)
    return {
        "github": {"X-Hub-Signature-256": "sha256=" + digest, "X-GitHub-Event": event, "X-GitHub-Delivery": delivery},
        "gitea": {"X-Gitea-Signature": digest, "X-Gitea-Event": event, "X-Gitea-Delivery": delivery},
        "forgejo": {"X-Forgejo-Signature": digest, "X-Forgejo-Event": event, "X-Forgejo-Delivery": delivery},
        "gitlab": {"X-Gitlab-Token": SECRET.decode(), "X-Gitlab-Event": event, "Idempotency-Key": delivery},
        "bitbucket-server": {"X-Hub-Signature": "sha256=" + digest, "X-Event-Key": event, "X-Request-Id": delivery},
    }[forge]


def fixture(name: str) -> tuple[str, str, bytes, dict[str, str]]:
    """(receiver kind, event header, body, signed headers) of tests/webhook_payloads/<forge>/<event>.<variant>.json"""
    path = PAYLOADS_DIR / name
    forge, body = path.parent.name, path.read_bytes()
    event = path.name.split(".")[0]
    if forge == "gitlab":
        event = GITLAB_EVENTS[event]
    elif forge == "bitbucket-server":
        event = json.loads(body).get("eventKey") or "diagnostics:ping"
    return ("gitea" if forge == "forgejo" else forge), event, body, forge_headers(forge, body, event)


@dataclass(frozen=True)
class Expect:
    event: str
    number: int | None = None
    head_sha: str | None = None
    base: str | None = None
    fork: bool | None = None
    moved: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    repository: str | None = None
    """A configured repository URL (another protocol or spelling than the payload's) the delivery must match."""


PR, CLOSED, IGNORED = PULL_REQUEST, PULL_REQUEST_CLOSED, PULL_REQUEST_IGNORED
HELLO = "git@github.com:Codertocat/Hello-World.git"
CODERTOCAT = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
EXPECTED = {
    "github/ping.json": Expect("ping"),
    "github/pull_request.opened.json": Expect(PR, 2, CODERTOCAT, "master", False, repository=HELLO),
    "github/pull_request.synchronize.json": Expect(PR, 2, CODERTOCAT, "master", False, repository=HELLO),
    "github/pull_request.reopened.json": Expect(PR, 2, CODERTOCAT, "master", False, repository=HELLO),
    "github/pull_request.closed.json": Expect(CLOSED, 2, CODERTOCAT, "master", repository=HELLO),
    "github/pull_request.labeled.json": Expect(IGNORED, 2, CODERTOCAT, "master"),
    "github/pull_request.edited.woodpecker.json": Expect(IGNORED, 62),
    "github/pull_request.merged.woodpecker.json": Expect(
        CLOSED,
        62,
        "c88b9ee719285134957cbc698c9b7ef9b78007bf",
        "main",
        repository="https://github.com/anbraten/test-ready-release-go",
    ),
    "github/push.new-branch.json": Expect("push", moved=("refs/heads/master",), repository=HELLO),
    "github/push.woodpecker.json": Expect(
        "push", moved=("refs/heads/main",), repository="ssh://git@github.com/woodpecker-ci/woodpecker.git"
    ),
    "github/push.delete-tag.json": Expect("push", deleted=("refs/tags/simple-tag",), repository=HELLO),
    "github/push.delete-branch.zulip.json": Expect(
        "push", deleted=("refs/heads/feature",), repository="https://github.com/eeshangarg/public-repo"
    ),
    "gitlab/merge_request.open.woodpecker.json": Expect(
        PR,
        3,
        "2f7670508b771e7e77839402be8b34b13787aba8",
        "main",
        False,
        repository="ssh://git@gitlab.com/demoaccount2-commits-group/test_ci_tmp.git",
    ),
    "gitlab/merge_request.open.docs.go-gitlab.json": Expect(
        PR,
        1,
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "master",
        False,
        repository="git@example.com:gitlabhq/gitlab-test",
    ),
    "gitlab/merge_request.update-new-commits.woodpecker.json": Expect(
        PR,
        3,
        "c136499ec574e1034b24c5d306de9acda3005367",
        "main",
        False,
        repository="https://gitlab.com/anbraten/woodpecker",
    ),
    "gitlab/merge_request.update-new-commits.go-gitlab.json": Expect(
        PR,
        2,
        "0ab96a10266b95b4b533dcfd98738015fbe70889",
        "master",
        False,
        repository="git@10.40.8.5:test/woodpecker.git",
    ),
    "gitlab/merge_request.reopen.woodpecker.json": Expect(
        PR, 1, "36b5813240a9d2daa29b05046d56a53e18f39a3e", "main", False
    ),
    "gitlab/merge_request.update-title.woodpecker.json": Expect(IGNORED, 3),
    "gitlab/merge_request.update-nothing.woodpecker.json": Expect(IGNORED, 3),
    "gitlab/merge_request.approved.woodpecker.json": Expect(IGNORED, 3),
    "gitlab/merge_request.close.woodpecker.json": Expect(CLOSED, 4, base="main"),
    "gitlab/merge_request.merge.woodpecker.json": Expect(CLOSED, 4, base="main"),
    "gitlab/push.woodpecker.json": Expect(
        "push", moved=("refs/heads/main",), repository="http://10.40.8.5:3200/test/woodpecker"
    ),
    "gitlab/push.docs.go-gitlab.json": Expect(
        "push", moved=("refs/heads/master",), repository="ssh://git@example.com/mike/diaspora.git"
    ),
    "gitea/pull_request.opened-from-fork.go-playground.json": Expect(
        PR,
        2,
        "48e773f892a831faa47c0a160d1b7f0cd369ae2a",
        "master",
        True,
        repository="ssh://git@localhost/example/example.git",
    ),
    "gitea/pull_request.opened.woodpecker.json": Expect(
        # no head repository in this (trimmed) payload: not known to be the same repository, so a fork
        PR,
        1,
        "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "main",
        True,
        repository="git@gitea.golang.org:gordon/hello-world.git",
    ),
    "gitea/pull_request.synchronized.woodpecker.json": Expect(
        PR,
        2,
        "788ed8d02d3b7fcfcf6386dbcbca696aa1d4dc25",
        "main",
        False,
        repository="http://127.0.0.1:3000/Test-CI/multi-line-secrets",
    ),
    "gitea/pull_request.reopened.woodpecker.json": Expect(
        PR, 1, "36b5813240a9d2daa29b05046d56a53e18f39a3e", "main", False
    ),
    "gitea/pull_request.closed.woodpecker.json": Expect(CLOSED, 1, base="main"),
    "gitea/pull_request.merged.woodpecker.json": Expect(CLOSED, 1, base="main"),
    "gitea/pull_request.edited-title.woodpecker.json": Expect(IGNORED, 7),
    "gitea/pull_request.label_updated.woodpecker.json": Expect(IGNORED, 7),
    "gitea/push.woodpecker.json": Expect(
        "push", moved=("refs/heads/main",), repository="https://gitea.golang.org/gordon/hello-world"
    ),
    "gitea/push.go-playground.json": Expect("push", moved=("refs/heads/master",)),
    "forgejo/pull_request.synchronized.woodpecker.json": Expect(
        PR, 2, "788ed8d02d3b7fcfcf6386dbcbca696aa1d4dc25", "main", False
    ),
    "forgejo/pull_request.reopened.woodpecker.json": Expect(
        PR,
        1,
        "36b5813240a9d2daa29b05046d56a53e18f39a3e",
        "main",
        False,
        repository="git@codeberg.org:test_it/test_ci_thing.git",
    ),
    "forgejo/pull_request.merged.woodpecker.json": Expect(CLOSED, 1, base="main"),
    "forgejo/pull_request.edited.woodpecker.json": Expect(IGNORED, 1),
    "forgejo/push.woodpecker.json": Expect("push", moved=("refs/heads/main",)),
    "bitbucket-server/diagnostics_ping.bitrise.json": Expect("ping"),
    "bitbucket-server/pr_opened.jenkins.json": Expect(
        PR, 61, "2a3416062a594c4a89d3459aef11b10a25e4d28a", "master", False
    ),
    "bitbucket-server/pr_opened.woodpecker.json": Expect(
        PR,
        125,
        "1c7589876bc8b5e83122b1656925d679915193d4",
        "main",
        False,
        repository="ssh://git@bitbucket.example.com:7999/dev/network-monitor.git",
    ),
    "bitbucket-server/pr_opened.from-fork.woodpecker.json": Expect(
        PR,
        114,
        "716e510cecbe203618609cf103c54e040b949739",
        "master",
        True,
        repository="https://bitbucket.example.com/scm/dev/deployment-automation.git",
    ),
    "bitbucket-server/pr_opened.personal-project.go-playground.json": Expect(
        PR,
        5,
        "32a0b8a740c2963c6f56bd8baf3dc05683d299e0",
        "master",
        False,
        repository="https://server.bitbucket.local/scm/~gopher/webhook-test",
    ),
    "bitbucket-server/pr_opened.no-links.bitrise.json": Expect(
        PR,
        1,
        "ef8755f06ee4b28c96a847a95cb8ec8ed6ddd1ca",
        "master",
        False,
        repository="https://bitbucket.example.org/scm/proj/repository.git",
    ),
    "bitbucket-server/pr_opened.no-clone-links.jenkins.json": Expect(
        PR,
        61,
        "2a3416062a594c4a89d3459aef11b10a25e4d28a",
        "master",
        False,
        repository="ssh://git@example.org:7999/abc/some-repo-slug.git",
    ),
    "bitbucket-server/pr_from_ref_updated.jenkins.json": Expect(
        # the anonymised commit id of this fixture has 39 digits
        PR,
        1,
        "522764f1602ae7d4abcd18197827cafdb3aef11",
        "master",
        False,
        repository="ssh://git@example.org/some-namespace/some-repo.git",
    ),
    "bitbucket-server/pr_from_ref_updated.no-links.bitrise.json": Expect(
        PR,
        1,
        "ef8755f06ee4b28c96a847a95cb8ec8ed6ddd1ca",
        "master",
        False,
        repository="ssh://git@bitbucket.example.org:7999/PROJ/repository.git",
    ),
    "bitbucket-server/pr_modified.jenkins.json": Expect(IGNORED, 13),
    "bitbucket-server/pr_merged.woodpecker.json": Expect(CLOSED, 111, base="master"),
    "bitbucket-server/pr_declined.jenkins.json": Expect(
        CLOSED, 7, base="master", repository="https://bitbucket:7990/scm/PPRPLUG/hellophp.git"
    ),
    "bitbucket-server/repo_refs_changed.jenkins.json": Expect("push", moved=("refs/heads/master",)),
    "bitbucket-server/repo_refs_changed.woodpecker.json": Expect(
        "push",
        moved=("refs/heads/renovate-all",),
        repository="ssh://git@bitbucket.example.com:7999/dev/deployment-automation.git",
    ),
    "bitbucket-server/repo_refs_changed.multiple-branches.zulip.json": Expect(
        "push",
        moved=("refs/heads/branch1", "refs/heads/master"),
        repository="http://139.59.64.214:7990/scm/SBOX/sandbox.git",
    ),
    "bitbucket-server/repo_refs_changed.delete-branch.go-playground.json": Expect(
        "push",
        deleted=("refs/heads/feature/wip",),
        repository="ssh://git@server.bitbucket.local:7999/~gopher/webhook-test.git",
    ),
}


def test_every_fixture_is_checked_and_its_source_recorded() -> None:
    on_disk = {p.relative_to(PAYLOADS_DIR).as_posix() for p in PAYLOADS_DIR.glob("*/*.json")}
    assert on_disk == set(EXPECTED)
    readme = (PAYLOADS_DIR / "README.md").read_text()
    assert [name for name in sorted(on_disk) if f"`{name}`" not in readme] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_deliveries_parse(name: str) -> None:
    kind, _, body, headers = fixture(name)
    expect = EXPECTED[name]
    delivery = receive(kind, headers, body, SECRET)
    assert delivery.event == expect.event
    assert delivery.delivery_id == "d1"
    if expect.event in (PR, CLOSED, IGNORED):
        assert delivery.number == expect.number
        assert delivery.action
    if expect.event in (PR, CLOSED):
        assert delivery.base_branch == (expect.base or delivery.base_branch) and delivery.base_branch
        assert delivery.head_ref and str(delivery.number) in delivery.head_ref
        assert delivery.repositories or delivery.project_slug, "the base repository must be matchable"
    if expect.event == PR:
        assert (delivery.head_sha, delivery.base_branch, delivery.from_fork) == (
            expect.head_sha,
            expect.base,
            expect.fork,
        )
        assert not delivery.base_branch.startswith("refs/")
    if expect.event == "push":
        assert (delivery.moved, delivery.deleted) == (expect.moved, expect.deleted)
    if expect.repository is not None:
        assert delivery.matches(expect.repository), (expect.repository, delivery.repositories, delivery.project_slug)
        assert not delivery.matches(expect.repository.replace(".git", "") + "-other.git")


@pytest.mark.parametrize("name", [n for n, e in sorted(EXPECTED.items()) if e.event != "ping"])
def test_real_deliveries_need_the_signature(name: str) -> None:
    kind, _, body, headers = fixture(name)
    if kind == "gitlab":  # GitLab signs nothing: it sends the secret itself
        sent, content = {**headers, "X-Gitlab-Token": "not-the-secret"}, body
    else:  # the body changed after it was signed
        sent, content = headers, body + b" "
    with pytest.raises(Rejected) as error:
        receive(kind, sent, content, SECRET)
    assert error.value.status == 401


def test_pull_request_fields_github() -> None:
    kind, _, body, headers = fixture("github/pull_request.opened.json")
    delivery = receive(kind, headers, body, SECRET)
    assert delivery.action == "opened" and delivery.head_branch == "changes"
    assert delivery.head_ref == "refs/pull/2/head"
    assert delivery.head_repositories[0] == "https://github.com/Codertocat/Hello-World.git"


def test_pull_request_fields_gitlab_and_forks_by_project_id() -> None:
    kind, _, body, headers = fixture("gitlab/merge_request.update-new-commits.woodpecker.json")
    delivery = receive(kind, headers, body, SECRET)
    assert delivery.action == "update" and delivery.head_ref == "refs/merge-requests/3/head"
    data = json.loads(body)
    data["object_attributes"]["source_project_id"] = 1  # as from a fork: another project
    data["object_attributes"]["source"]["git_http_url"] = "https://gitlab.com/someone/woodpecker.git"
    forked = json.dumps(data).encode()
    assert receive(kind, forge_headers("gitlab", forked, "Merge Request Hook"), forked, SECRET).from_fork


def test_pull_request_fields_bitbucket_fork_by_project_and_slug() -> None:
    kind, _, body, headers = fixture("bitbucket-server/pr_opened.from-fork.woodpecker.json")
    delivery = receive(kind, headers, body, SECRET)
    assert delivery.project_slug == ("DEV", "deployment-automation")
    assert delivery.head_project_slug == ("~JOHN.DOE_EXAMPLE.COM", "deployment-automation")
    assert delivery.head_ref == "refs/pull-requests/114/from" and delivery.action == "pr:opened"
    assert same_project_slug(
        "https://bitbucket.example.com/scm/~john.doe_example.com/deployment-automation.git", delivery.head_project_slug
    )


def test_github_retargeted_pull_request_is_previewed_and_a_deleted_fork_is_a_fork() -> None:
    kind, _, body, _ = fixture("github/pull_request.edited.woodpecker.json")
    data = json.loads(body)
    data["changes"] = {"base": {"ref": {"from": "develop"}, "sha": {"from": "0" * 40}}}
    data["pull_request"]["head"]["repo"] = None  # GitHub's payload once the fork is deleted
    edited = json.dumps(data).encode()
    delivery = receive(kind, forge_headers("github", edited, "pull_request"), edited, SECRET)
    assert delivery.event == PULL_REQUEST and delivery.from_fork and delivery.head_repositories == ()


@pytest.mark.parametrize(
    ("name", "retarget"),
    [
        ("bitbucket-server/pr_modified.jenkins.json", {"previousTarget": {"id": "refs/heads/develop"}}),
        ("gitlab/merge_request.update-title.woodpecker.json", {"changes": {"target_branch": {"previous": "develop"}}}),
        ("gitea/pull_request.edited-title.woodpecker.json", {"changes": {"ref": {"from": "develop"}}}),
    ],
)
def test_a_retargeted_pull_request_is_previewed(name: str, retarget: dict[str, Any]) -> None:
    """The real edit (ignored as it is), as it comes when the edit changed the target branch."""
    kind, event, body, _ = fixture(name)
    data = {**json.loads(body), **retarget}
    edited = json.dumps(data).encode()
    delivery = receive(kind, forge_headers(Path(name).parent.name, edited, event), edited, SECRET)
    assert delivery.event == PULL_REQUEST and delivery.head_sha and delivery.base_branch


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("gitlab/push.woodpecker.json", "after"),
        ("gitea/push.woodpecker.json", "after"),
        ("forgejo/push.woodpecker.json", "after"),
        ("github/push.woodpecker.json", "after"),
    ],
)
def test_an_all_zero_after_deletes_the_ref_on_every_forge(name: str, field: str) -> None:
    """The real push, with the new commit id a deletion has (GitLab's and Gitea's documented way)."""
    kind, event, body, _ = fixture(name)
    data = json.loads(body)
    data[field] = "0" * 40
    deleting = json.dumps(data).encode()
    delivery = receive(kind, forge_headers(Path(name).parent.name, deleting, event), deleting, SECRET)
    assert delivery.moved == () and delivery.deleted == (data["ref"],)


def test_bitbucket_unsigned_ping_is_a_ping_but_a_wrongly_signed_one_is_401() -> None:
    _, _, body, headers = fixture("bitbucket-server/diagnostics_ping.bitrise.json")
    unsigned = {"X-Event-Key": "diagnostics:ping", "X-Request-Id": "009af3f7-21ef-4806-8649-e6916498ab0f"}
    assert receive("bitbucket-server", unsigned, body, SECRET).event == "ping"
    assert receive("bitbucket-server", unsigned, b"not even JSON", SECRET).event == "ping"
    assert receive("bitbucket-server", headers, body, SECRET).event == "ping"
    with pytest.raises(Rejected) as error:
        receive("bitbucket-server", {**unsigned, "X-Hub-Signature": "sha256=00"}, body, SECRET)
    assert error.value.status == 401
    for event in ("repo:refs_changed", "pr:opened", ""):  # only the ping may come unsigned
        with pytest.raises(Rejected) as unsigned_error:
            receive("bitbucket-server", {"X-Event-Key": event}, body, SECRET)
        assert unsigned_error.value.status == 401


@pytest.mark.parametrize(
    ("configured", "announced", "same"),
    [
        ("https://bitbucket.example.org/scm/proj/repository.git", ("PROJ", "repository"), True),
        ("https://bitbucket.example.org/scm/PROJ/repository", ("proj", "repository"), True),
        ("https://bitbucket.example.org/bitbucket/scm/proj/repository.git", ("PROJ", "repository"), True),
        ("ssh://git@bitbucket.example.org:7999/proj/repository.git", ("PROJ", "repository"), True),
        ("git@bitbucket.example.org:proj/repository.git", ("PROJ", "repository"), True),
        ("https://bitbucket.example.org/projects/PROJ/repos/repository/browse", ("PROJ", "repository"), True),
        ("https://bitbucket.example.org/users/gopher/repos/webhook-test", ("~GOPHER", "webhook-test"), True),
        ("https://bitbucket.example.org/scm/~gopher/webhook-test.git", ("~gopher", "webhook-test"), True),
        ("https://bitbucket.example.org/scm/proj/other.git", ("PROJ", "repository"), False),
        ("https://bitbucket.example.org/scm/other/repository.git", ("PROJ", "repository"), False),
        ("https://bitbucket.example.org/a/proj/repository.git", ("PROJ", "repository"), False),
        ("/srv/git/proj/repository.git", ("PROJ", "repository"), False),
        ("https://bitbucket.example.org/scm/proj/repository.git", None, False),
    ],
)
def test_bitbucket_project_and_slug_match_the_configured_url(
    configured: str, announced: tuple[str, str] | None, same: bool
) -> None:
    assert same_project_slug(configured, announced) is same


def test_pull_request_payloads_missing_what_a_preview_needs_are_400() -> None:
    _, _, body, _ = fixture("github/pull_request.synchronize.json")
    for damage in ("number", "head", "base"):
        data = json.loads(body)
        data.pop("number")
        data["pull_request"].pop(damage)
        broken = json.dumps(data).encode()
        with pytest.raises(Rejected) as error:
            receive("github", forge_headers("github", broken, "pull_request"), broken, SECRET)
        assert error.value.status == 400, damage
    data = json.loads(body)
    data["pull_request"]["head"]["sha"] = "--upload-pack=touch /tmp/x"  # it ends up in a git fetch
    hostile = json.dumps(data).encode()
    with pytest.raises(Rejected):
        receive("github", forge_headers("github", hostile, "pull_request"), hostile, SECRET)
    data["action"] = "labeled"  # an ignored action is not refused for it
    labelled = json.dumps(data).encode()
    ignored = receive("github", forge_headers("github", labelled, "pull_request"), labelled, SECRET)
    assert ignored.event == PULL_REQUEST_IGNORED and ignored.head_sha is None


# --- The HTTP route: pushes, deletes, pings, and pull requests handed to the preview hooks ---


@dataclass
class Hooks:
    calls: list[tuple[str, str, Delivery]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    answer: bool = True

    def preview(self, name: str, delivery: Delivery) -> bool:
        self.calls.append(("preview", name, delivery))
        return self.answer

    def closed(self, name: str, delivery: Delivery) -> bool:
        self.calls.append(("closed", name, delivery))
        return self.answer


def serve(
    tmp_path: Path,
    kind: str,
    repository: str,
    branch: str,
    *,
    previews: bool = True,
    forks: bool = False,
    hooks: Hooks | None = None,
) -> tuple[TestClient, FakeScheduler, Hooks]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    config = parse(
        {
            "controller": {"data_dir": str(tmp_path)},
            "deployments": {"web": {"repository": repository, "branch": branch}},
            "receivers": {"hook": {"kind": kind, "secret_file": str(tmp_path / "secret"), "deployments": ["web"]}},
        },
        tmp_path / "nixgitops.toml",
    )
    web = replace(config.deployments["web"], previews=previews, previews_from_forks=forks)
    config = replace(config, deployments={"web": web})
    scheduler, hooks = FakeScheduler(config), hooks or Hooks()
    app = create_app(
        config, scheduler, Metrics(), preview=hooks.preview, preview_closed=hooks.closed, log=hooks.lines.append
    )  # type: ignore[arg-type]
    return TestClient(app), scheduler, hooks


def post(client: TestClient, name: str, delivery: str = "d1") -> Any:
    forge = Path(name).parent.name
    _, event, body, _ = fixture(name)
    return client.post("/hooks/hook", content=body, headers=forge_headers(forge, body, event, delivery))


def test_bitbucket_test_connection_is_answered_200_unsigned(tmp_path: Path) -> None:
    client, scheduler, hooks = serve(
        tmp_path, "bitbucket-server", "https://bb.example.org/scm/proj/repository.git", "master"
    )
    _, _, body, _ = fixture("bitbucket-server/diagnostics_ping.bitrise.json")
    headers = {"X-Event-Key": "diagnostics:ping", "X-Request-Id": "009af3f7", "Content-Type": "application/json"}
    response = client.post("/hooks/hook", content=body, headers=headers)
    assert response.status_code == 200 and response.json() == {"result": "ping"}
    assert scheduler.requests == [] and hooks.calls == []


def test_a_pushed_branch_without_links_matches_by_project_and_slug(tmp_path: Path) -> None:
    client, scheduler, _ = serve(
        tmp_path, "bitbucket-server", "ssh://git@bb.example.org:7999/sbox/sandbox.git", "master"
    )
    _, event, body, _ = fixture("bitbucket-server/repo_refs_changed.multiple-branches.zulip.json")
    data = json.loads(body)
    del data["repository"]["links"]  # as Atlassian's documented payloads are
    stripped = json.dumps(data).encode()
    response = client.post("/hooks/hook", content=stripped, headers=forge_headers("bitbucket-server", stripped, event))
    assert response.json() == {"result": "triggered", "deployments": ["web"]} and scheduler.requests == ["web"]


@pytest.mark.parametrize(
    ("name", "kind", "repository", "branch"),
    [
        ("github/push.delete-branch.zulip.json", "github", "git@github.com:eeshangarg/public-repo.git", "feature"),
        (
            "bitbucket-server/repo_refs_changed.delete-branch.go-playground.json",
            "bitbucket-server",
            "https://server.bitbucket.local/scm/~gopher/webhook-test.git",
            "feature/wip",
        ),
    ],
)
def test_a_push_deleting_the_tracked_branch_is_acknowledged_logged_and_ignored(
    tmp_path: Path, name: str, kind: str, repository: str, branch: str
) -> None:
    client, scheduler, hooks = serve(tmp_path, kind, repository, branch)
    response = post(client, name)
    assert response.status_code == 202
    assert response.json() == {
        "result": "ignored",
        "reason": "the push deletes the tracked branch",
        "deployments": ["web"],
    }
    assert scheduler.requests == []
    assert len(hooks.lines) == 1 and f"deletes refs/heads/{branch}" in hooks.lines[0] and "web" in hooks.lines[0]


def test_a_pull_request_is_handed_to_the_preview_hook(tmp_path: Path) -> None:
    client, scheduler, hooks = serve(tmp_path, "github", HELLO, "master")
    response = post(client, "github/pull_request.synchronize.json")
    assert response.status_code == 202 and response.json() == {"result": "preview", "deployments": ["web"]}
    [(which, name, delivery)] = hooks.calls
    assert (which, name, delivery.number, delivery.head_sha) == ("preview", "web", 2, CODERTOCAT)
    assert scheduler.requests == [], "a pull request never reconciles"
    again = post(client, "github/pull_request.synchronize.json")
    assert again.json()["result"] == "duplicate" and len(hooks.calls) == 1
    closed = post(client, "github/pull_request.closed.json", "d2")
    assert closed.json() == {"result": "preview_closed", "deployments": ["web"]}
    assert [c[0] for c in hooks.calls] == ["preview", "closed"]
    labelled = post(client, "github/pull_request.labeled.json", "d3")
    assert labelled.status_code == 202 and labelled.json()["result"] == "ignored"
    assert "labeled" in labelled.json()["reason"] and len(hooks.calls) == 2


def test_pull_requests_without_previews_or_to_other_branches_are_ignored(tmp_path: Path) -> None:
    client, _, hooks = serve(tmp_path, "gitlab", "https://gitlab.com/anbraten/woodpecker.git", "main", previews=False)
    response = post(client, "gitlab/merge_request.update-new-commits.woodpecker.json")
    assert response.status_code == 202
    assert response.json() == {"result": "ignored", "reason": "no deployment has previews", "deployments": ["web"]}
    other, _, other_hooks = serve(tmp_path / "other", "gitlab", "https://gitlab.com/anbraten/woodpecker.git", "develop")
    ignored = post(other, "gitlab/merge_request.update-new-commits.woodpecker.json")
    assert ignored.json()["result"] == "ignored" and "base branch" in ignored.json()["reason"]
    assert hooks.calls == other_hooks.calls == []


def test_forks_reach_the_preview_hook_marked_and_a_refusal_says_why(tmp_path: Path) -> None:
    """Whether to run a fork's code is the preview runner's decision (previews_from_forks), as for polled ones."""
    repository = "https://bitbucket.example.com/scm/dev/deployment-automation.git"
    client, _, hooks = serve(tmp_path, "bitbucket-server", repository, "master", hooks=Hooks(answer=False))
    response = post(client, "bitbucket-server/pr_opened.from-fork.woodpecker.json")
    assert response.status_code == 202 and response.json()["result"] == "ignored"
    assert "fork" in response.json()["reason"] and "previews_from_forks" in response.json()["reason"]
    assert [(c[0], c[2].from_fork, c[2].number) for c in hooks.calls] == [("preview", True, 114)]
    allowed, _, allowed_hooks = serve(tmp_path / "forks", "bitbucket-server", repository, "master", forks=True)
    assert post(allowed, "bitbucket-server/pr_opened.from-fork.woodpecker.json").json()["result"] == "preview"
    assert [c[2].from_fork for c in allowed_hooks.calls] == [True]


def test_a_preview_hook_that_fails_is_a_500_and_the_redelivery_is_tried_again(tmp_path: Path) -> None:
    class Broken(Hooks):
        def preview(self, name: str, delivery: Delivery) -> bool:
            super().preview(name, delivery)
            raise RuntimeError("queue full")

    client, _, hooks = serve(
        tmp_path / "b", "gitea", "http://127.0.0.1:3000/Test-CI/multi-line-secrets.git", "main", hooks=Broken()
    )
    for attempt in range(2):
        response = post(client, "gitea/pull_request.synchronized.woodpecker.json")
        assert response.status_code == 500 and response.json()["result"] == "preview_failed", attempt
    assert len(hooks.calls) == 2 and "queue full" in hooks.lines[0]


def test_no_preview_hook_means_pull_requests_are_acknowledged(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(SECRET)
    config = parse(
        {
            "controller": {"data_dir": str(tmp_path)},
            "deployments": {"web": {"repository": HELLO, "branch": "master"}},
            "receivers": {"gh": {"kind": "github", "secret_file": str(tmp_path / "secret"), "deployments": ["web"]}},
        },
        tmp_path / "nixgitops.toml",
    )
    config = replace(config, deployments={"web": replace(config.deployments["web"], previews=True)})
    client = TestClient(create_app(config, FakeScheduler(config), Metrics()))  # type: ignore[arg-type]
    _, _, body, headers = fixture("github/pull_request.opened.json")
    response = client.post("/hooks/gh", content=body, headers=headers)
    assert response.status_code == 202 and response.json()["reason"] == "this controller runs no previews"
