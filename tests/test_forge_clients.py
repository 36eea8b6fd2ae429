"""The forge API clients against fake forges on loopback (real HTTP, no mocks of httpx).

Each test runs against GitHub, GitLab, Gitea and Bitbucket Server unless it is about one of them. The injected
``sleep`` records the waits instead of waiting, so retries cost nothing.
"""

from __future__ import annotations

import email.utils
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeforge import FAKES, FakeForge, FakeGitHub, FakeGitLab, utf16_units
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.bitbucket_server_api import project_and_slug
from webhooks.forge import (
    CUT_NOTE,
    MAX_ATTEMPTS,
    STATES,
    Forge,
    ForgeConfig,
    ForgeError,
    cut_comment,
    cut_line,
    open_forge,
    owner_and_name,
    units,
)
from webhooks.gitlab_api import GitLabForge

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
MARKER = "<!-- nixgitops:web -->"
CONTEXT = "nixgitops/web"

FORGE_WORDS = {
    "github": ["pending", "success", "failure", "error"],
    "gitlab": ["pending", "success", "failed", "failed"],
    "gitea": ["pending", "success", "failure", "error"],
    "bitbucket_server": ["INPROGRESS", "SUCCESSFUL", "FAILED", "FAILED"],
}
HEAD_REFS = {
    "github": "refs/pull/{n}/head",
    "gitlab": "refs/merge-requests/{n}/head",
    "gitea": "refs/pull/{n}/head",
    "bitbucket_server": "refs/pull-requests/{n}/from",
}
COMMENT_PATHS = {  # what lists and what writes a pull request's comments, per forge
    "github": ("/comments$", "/comments$", "/comments/"),
    "gitlab": ("/notes$", "/notes$", "/notes/"),
    "gitea": ("/comments$", "/comments$", "/comments/"),
    "bitbucket_server": ("/activities$", "/comments$", "/comments/"),
}
EDIT_METHOD = {"github": "PATCH", "gitlab": "PUT", "gitea": "PATCH", "bitbucket_server": "PUT"}


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        assert 0 <= seconds <= 60, seconds
        self.append(seconds)


@pytest.fixture(params=sorted(FAKES))
def fake(request: pytest.FixtureRequest) -> Iterator[FakeForge]:
    with FAKES[request.param](token="s3cret-token-value") as forge:
        yield forge


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n")  # as `echo TOKEN > file` leaves it
    return path


def connect(fake: FakeForge, tmp_path: Path, sleeps: Sleeps, *, token: str = "", timeout: float = 10.0) -> Forge:
    config = ForgeConfig(f"test-{fake.kind}", fake.kind, fake.url, token_file(tmp_path, token or fake.token))
    return open_forge(config, sleep=sleeps, timeout=timeout)


@pytest.fixture
def client(fake: FakeForge, tmp_path: Path, sleeps: Sleeps) -> Iterator[Forge]:
    forge = connect(fake, tmp_path, sleeps)
    yield forge
    forge.close()


# --- statuses -------------------------------------------------------------------------------------------------------


def test_each_state_is_set_in_the_forges_words(fake: FakeForge, client: Forge) -> None:
    for state in STATES:
        client.set_status(fake.clone_url, SHA, state, CONTEXT, f"plan {state}", "https://ci.example.com/run/1")
    statuses = fake.statuses(SHA)
    assert [s.state for s in statuses] == FORGE_WORDS[fake.kind]
    assert {s.context for s in statuses} == {CONTEXT}
    assert [s.description for s in statuses] == [f"plan {state}" for state in STATES]
    assert {s.target_url for s in statuses} == {"https://ci.example.com/run/1"}


def test_a_long_description_is_cut_to_the_forges_limit(fake: FakeForge, client: Forge) -> None:
    client.set_status(fake.clone_url, SHA, "failure", CONTEXT, "word " * 400)
    client.set_status(fake.clone_url, OTHER_SHA, "success", CONTEXT, "😀" * 400)  # two UTF-16 units each
    for sha in (SHA, OTHER_SHA):
        (status,) = fake.statuses(sha)
        assert status.description is not None
        assert status.description.endswith("…")
        assert utf16_units(status.description) <= client.description_limit
        assert utf16_units(status.description) >= client.description_limit - 2
    assert client.description_limit == {"github": 140, "gitlab": 255, "gitea": 255, "bitbucket_server": 255}[fake.kind]


def test_the_same_state_twice_is_no_error(fake: FakeForge, client: Forge) -> None:
    """GitLab answers 400 "Cannot transition status via :enqueue from :pending" to a repeated pending."""
    client.set_status(fake.clone_url, SHA, "pending", CONTEXT, "planning")
    client.set_status(fake.clone_url, SHA, "pending", CONTEXT, "planning again")
    client.set_status(fake.clone_url, SHA, "success", CONTEXT, "planned")
    assert fake.statuses(SHA)[-1].state == FORGE_WORDS[fake.kind][1]


def test_bitbucket_needs_a_url_so_the_commit_page_stands_in(tmp_path: Path, sleeps: Sleeps) -> None:
    with FAKES["bitbucket_server"]() as fake:
        client = connect(fake, tmp_path, sleeps)
        client.set_status(fake.clone_url, SHA, "pending", CONTEXT, "planning")
        client.set_status(fake.clone_url, SHA, "success", CONTEXT, "planned", "https://ci.example.com/" + "x" * 500)
        client.close()
    urls = [s.target_url for s in fake.statuses(SHA)]
    assert urls == [f"{fake.url}/projects/PROJ/repos/infra/commits/{SHA}"] * 2
    assert fake.statuses(SHA)[0].raw["key"] == CONTEXT
    assert fake.statuses(SHA)[0].raw["name"] == CONTEXT


# --- comments -------------------------------------------------------------------------------------------------------


def test_one_comment_is_created_then_edited_across_pages(fake: FakeForge, client: Forge) -> None:
    fake.add_pull_request(7, SHA)
    fake.page_size = 3
    others = [fake.add_comment(7, f"looks good {i}") for i in range(7)]
    if fake.kind == "gitlab":
        fake.add_comment(7, f"added 1 commit {MARKER}", system=True)  # GitLab's own notes are never edited

    client.upsert_comment(fake.clone_url, 7, MARKER, f"{MARKER}\nplan A")
    client.upsert_comment(fake.clone_url, 7, MARKER, f"{MARKER}\nplan B")
    client.upsert_comment(fake.clone_url, 7, MARKER, f"{MARKER}\nplan B")  # unchanged: not written again

    ours = [c for c in fake.comments(7) if MARKER in c.body and not c.system]
    assert len(ours) == 1
    assert ours[0].body == f"{MARKER}\nplan B"
    assert [c.id for c in fake.comments(7) if c.id in others] == others
    assert all(c.body.startswith("looks good") for c in fake.comments(7) if c.id in others)
    listing, creating, editing = COMMENT_PATHS[fake.kind]
    assert len(fake.requests_matching("POST", creating)) == 1
    assert len(fake.requests_matching(EDIT_METHOD[fake.kind], editing)) == 1
    if fake.kind != "gitea":  # Gitea answers every comment at once
        pages = {r.query.get("page", r.query.get("start")) for r in fake.requests_matching("GET", listing)}
        assert len(pages) >= 3, pages


def test_the_marker_is_added_when_the_body_lacks_it(fake: FakeForge, client: Forge) -> None:
    fake.add_pull_request(3, SHA)
    client.upsert_comment(fake.clone_url, 3, MARKER, "plan A")
    client.upsert_comment(fake.clone_url, 3, MARKER, "plan B")
    (comment,) = fake.comments(3)
    assert comment.body == f"{MARKER}\nplan B"


def test_a_comment_that_only_quotes_the_marker_is_left_alone(fake: FakeForge, client: Forge) -> None:
    fake.add_pull_request(6, SHA)
    theirs = fake.add_comment(6, f"why does the bot write {MARKER} into its comments?")
    client.upsert_comment(fake.clone_url, 6, MARKER, "plan A")
    client.upsert_comment(fake.clone_url, 6, MARKER, "plan B")
    assert [(c.id == theirs, c.body.endswith("comments?") or c.body) for c in fake.comments(6)] == [
        (True, True),
        (False, f"{MARKER}\nplan B"),
    ]


def test_a_marker_placed_last_by_the_caller_is_found_there(fake: FakeForge, client: Forge) -> None:
    fake.add_pull_request(8, SHA)
    client.upsert_comment(fake.clone_url, 8, MARKER, f"plan A\n{MARKER}")
    client.upsert_comment(fake.clone_url, 8, MARKER, f"plan B\n{MARKER}")
    assert [c.body for c in fake.comments(8)] == [f"plan B\n{MARKER}"]


def test_a_body_past_the_limit_is_cut_with_the_note(fake: FakeForge, client: Forge) -> None:
    fake.add_pull_request(5, SHA)
    limit = client.comment_limit
    body = f"{MARKER}\n```\n" + "resource changed\n" * (limit // 17 + 100)
    client.upsert_comment(fake.clone_url, 5, MARKER, body)
    client.upsert_comment(fake.clone_url, 5, MARKER, "x" * (limit + 5) + MARKER)  # the marker at the very end
    (comment,) = fake.comments(5)
    assert units(comment.body) <= limit
    assert MARKER in comment.body
    assert CUT_NOTE in comment.body
    assert comment.version == 1
    assert limit == {"github": 65_536, "gitlab": 1_000_000, "gitea": 65_536, "bitbucket_server": 32_767}[fake.kind]


def test_a_comment_whose_creation_answered_500_is_not_created_twice(fake: FakeForge, client: Forge) -> None:
    fake.add_pull_request(9, SHA)
    _, creating, _ = COMMENT_PATHS[fake.kind]
    fake.fail_next(1, 500, method="POST", path=creating, after=True)  # done, but answered 500
    client.upsert_comment(fake.clone_url, 9, MARKER, "plan")
    assert [c.body for c in fake.comments(9)] == [f"{MARKER}\nplan"]


def test_an_edit_refused_as_out_of_date_is_read_and_written_again(fake: FakeForge, client: Forge) -> None:
    fake.add_pull_request(4, SHA)
    client.upsert_comment(fake.clone_url, 4, MARKER, "plan A")
    fake.fail_next(1, 409, method=EDIT_METHOD[fake.kind])
    client.upsert_comment(fake.clone_url, 4, MARKER, "plan B")
    (comment,) = fake.comments(4)
    assert comment.body == f"{MARKER}\nplan B"


# --- pull requests --------------------------------------------------------------------------------------------------


def test_open_pull_requests_to_a_branch_with_their_heads(fake: FakeForge, client: Forge) -> None:
    fake.page_size = 1
    fake.add_pull_request(1, SHA, title="same repository")
    fake.add_pull_request(2, OTHER_SHA, from_fork=True, title="from a fork")
    fake.add_pull_request(3, "1" * 40, base_branch="staging")
    fake.add_pull_request(4, "2" * 40, state="closed")
    pulls = client.open_pull_requests(fake.clone_url, "main")
    assert [p.number for p in pulls] == [1, 2]
    assert [p.head_sha for p in pulls] == [SHA, OTHER_SHA]
    assert [p.from_fork for p in pulls] == [False, True]
    assert [p.head_ref for p in pulls] == [HEAD_REFS[fake.kind].format(n=n) for n in (1, 2)]
    assert {p.base_branch for p in pulls} == {"main"}
    assert [p.title for p in pulls] == ["same repository", "from a fork"]
    assert all(p.url.startswith("https://") for p in pulls)
    assert client.open_pull_requests(fake.clone_url, "staging")[0].number == 3
    assert client.open_pull_requests(fake.clone_url, "nowhere") == []


# --- retries and errors ---------------------------------------------------------------------------------------------


def test_5xx_is_retried_with_backoff(fake: FakeForge, client: Forge, sleeps: Sleeps) -> None:
    fake.fail_next(2, 502)
    client.set_status(fake.clone_url, SHA, "success", CONTEXT, "planned")
    assert len(fake.statuses(SHA)) == 1
    assert len(sleeps) == 2
    assert sleeps[0] < sleeps[1]


def test_429_waits_as_retry_after_says(fake: FakeForge, client: Forge, sleeps: Sleeps) -> None:
    fake.add_pull_request(1, SHA)
    fake.fail_next(1, 429, headers={"Retry-After": "7"})
    assert [p.number for p in client.open_pull_requests(fake.clone_url, "main")] == [1]
    assert sleeps == [7.0]


def test_retry_after_as_an_http_date(fake: FakeForge, client: Forge, sleeps: Sleeps) -> None:
    fake.fail_next(1, 429, headers={"Retry-After": email.utils.formatdate(time.time() + 10, usegmt=True)})
    client.set_status(fake.clone_url, SHA, "pending", CONTEXT, "planning")
    assert len(sleeps) == 1
    assert 7 <= sleeps[0] <= 10


def test_a_wait_past_the_budget_fails_at_once(fake: FakeForge, client: Forge, sleeps: Sleeps) -> None:
    fake.fail_next(1, 429, headers={"Retry-After": "3600"})
    with pytest.raises(ForgeError, match="3600 s") as caught:
        client.set_status(fake.clone_url, SHA, "pending", CONTEXT, "planning")
    assert caught.value.status == 429
    assert sleeps == []
    assert len(fake.requests) == 1


def test_github_rate_limit_headers_are_honoured(tmp_path: Path, sleeps: Sleeps) -> None:
    with FakeGitHub() as fake:
        reset = int(time.time()) + 20
        fake.fail_next(
            1,
            403,
            headers={"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
            body="API rate limit exceeded for installation ID 1.",
        )
        client = connect(fake, tmp_path, sleeps)
        client.set_status(fake.clone_url, SHA, "success", CONTEXT, "planned")
        client.close()
    assert len(sleeps) == 1
    assert 17 <= sleeps[0] <= 22
    assert len(fake.statuses(SHA)) == 1


def test_github_secondary_rate_limit_retry_after_on_403(tmp_path: Path, sleeps: Sleeps) -> None:
    with FakeGitHub() as fake:
        fake.fail_next(1, 403, headers={"retry-after": "4"}, body="You have exceeded a secondary rate limit.")
        client = connect(fake, tmp_path, sleeps)
        client.set_status(fake.clone_url, SHA, "success", CONTEXT, "planned")
        client.close()
    assert sleeps == [4.0]


def test_gitlab_ratelimit_reset_is_honoured(tmp_path: Path, sleeps: Sleeps) -> None:
    with FakeGitLab() as fake:
        reset = int(time.time()) + 12
        fake.fail_next(1, 429, headers={"RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)})
        client = connect(fake, tmp_path, sleeps)
        client.set_status(fake.clone_url, SHA, "success", CONTEXT, "planned")
        client.close()
    assert len(sleeps) == 1
    assert 9 <= sleeps[0] <= 14


def test_persistent_5xx_gives_up_after_the_attempts(fake: FakeForge, client: Forge, sleeps: Sleeps) -> None:
    fake.fail_next(MAX_ATTEMPTS + 2, 503, body="upstream down")
    with pytest.raises(ForgeError, match=f"gave up after {MAX_ATTEMPTS} attempts") as caught:
        client.set_status(fake.clone_url, SHA, "success", CONTEXT, "planned")
    assert caught.value.status == 503
    assert len(fake.requests) == MAX_ATTEMPTS
    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_401_fails_at_once_without_the_token(fake: FakeForge, tmp_path: Path, sleeps: Sleeps) -> None:
    client = connect(fake, tmp_path, sleeps, token="wrong-token-9f8e7d")
    with pytest.raises(ForgeError) as caught:
        client.set_status(fake.clone_url, SHA, "success", CONTEXT, "planned")
    client.close()
    error = caught.value
    assert error.status == 401
    assert error.method == "POST"
    assert f"test-{fake.kind}" in str(error)
    assert "/statuses/" in str(error) or "/commits/" in str(error)
    assert "wrong-token-9f8e7d" not in str(error) and "wrong-token-9f8e7d" not in repr(error)
    assert fake.token not in str(error)
    assert "Authorization" not in str(error) and "PRIVATE-TOKEN" not in str(error)
    assert sleeps == []
    assert len(fake.requests) == 1


def test_other_4xx_fail_at_once_with_the_forges_words(fake: FakeForge, client: Forge, sleeps: Sleeps) -> None:
    with pytest.raises(ForgeError) as caught:
        client.upsert_comment(fake.clone_url, 404, MARKER, "no such pull request")
    assert caught.value.status == 404
    assert caught.value.detail
    assert sleeps == []
    assert len(fake.requests) == 1


def test_the_token_file_may_end_in_a_newline(fake: FakeForge, client: Forge) -> None:
    client.open_pull_requests(fake.clone_url, "main")
    (request,) = fake.requests
    sent = request.headers.get("private-token") or request.headers["authorization"]
    assert sent.endswith(fake.token)
    assert "\n" not in sent


def test_a_token_echoed_by_the_forge_is_masked(fake: FakeForge, client: Forge) -> None:
    fake.fail_next(1, 400, body=f"bad token {fake.token}")
    with pytest.raises(ForgeError) as caught:
        client.set_status(fake.clone_url, SHA, "success", CONTEXT, "planned")
    assert fake.token not in str(caught.value)
    assert "***" in str(caught.value)


def test_a_redirect_is_not_followed(fake: FakeForge, client: Forge) -> None:
    fake.fail_next(1, 301, headers={"Location": "https://elsewhere.example.com/api"})
    with pytest.raises(ForgeError, match=re.escape("redirected to https://elsewhere.example.com/api")):
        client.open_pull_requests(fake.clone_url, "main")


def test_a_timeout_is_retried(fake: FakeForge, tmp_path: Path, sleeps: Sleeps) -> None:
    fake.add_pull_request(1, SHA)
    fake.fail_next(1, None, delay=0.6)
    client = connect(fake, tmp_path, sleeps, timeout=0.2)
    assert [p.number for p in client.open_pull_requests(fake.clone_url, "main")] == [1]
    client.close()
    assert len(sleeps) == 1


def test_connection_refused_is_retried_then_fails(tmp_path: Path, sleeps: Sleeps) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ForgeConfig("closed", "gitea", f"http://127.0.0.1:{port}/api/v1", token_file(tmp_path, "t"))
    client = open_forge(config, sleep=sleeps)
    with pytest.raises(ForgeError, match="cannot connect") as caught:
        client.open_pull_requests("https://gitea.example.com/org/infra.git", "main")
    client.close()
    assert caught.value.status is None
    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_a_missing_token_file_is_a_forge_error(tmp_path: Path) -> None:
    config = ForgeConfig("gh", "github", "https://api.github.com", tmp_path / "absent")
    with pytest.raises(ForgeError, match="cannot read the token file"):
        open_forge(config)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ForgeError, match="is empty"):
        open_forge(ForgeConfig("gh", "github", "https://api.github.com", tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown kind"):
        open_forge(ForgeConfig("x", "sourcehut", "https://x.example.com", tmp_path / "empty"))


def test_bad_arguments_fail_before_any_request(fake: FakeForge, client: Forge) -> None:
    with pytest.raises(ValueError, match="state"):
        client.set_status(fake.clone_url, SHA, "running", CONTEXT, "")
    with pytest.raises(ValueError, match="commit id"):
        client.set_status(fake.clone_url, "HEAD", "success", CONTEXT, "")
    with pytest.raises(ForgeError, match=r"repository|owner|project|path"):
        client.set_status("https://example.com/", SHA, "success", CONTEXT, "")
    assert fake.requests == []


# --- repository URLs and cutting ------------------------------------------------------------------------------------

NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True).filter(
    lambda s: not s.endswith(".git") and not s.endswith(".")
)
HOST = st.sampled_from(["github.com", "gitlab.example.com", "git.example.org", "10.0.0.7"])


def clone_urls(host: str, path: str) -> list[str]:
    return [
        f"https://{host}/{path}.git",
        f"https://{host}/{path}",
        f"https://user:secret@{host}:8443/{path}.git/",
        f"http://{host}/{path}",
        f"git@{host}:{path}.git",
        f"{host}:{path}",
        f"ssh://git@{host}:2222/{path}.git",
    ]


@settings(max_examples=60, deadline=None)
@given(HOST, NAME, NAME)
def test_owner_and_name_round_trip(host: str, owner: str, name: str) -> None:
    for url in clone_urls(host, f"{owner}/{name}"):
        assert owner_and_name(url) == (owner, name), url


@pytest.fixture(scope="module")
def gitlab_clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GitLabForge]]:
    token = token_file(tmp_path_factory.mktemp("token"), "t")
    apis = ("https://gitlab.example.com/api/v4", "https://gitlab.example.com/gitlab-root/api/v4")
    clients = [GitLabForge(ForgeConfig("gl", "gitlab", api, token)) for api in apis]
    yield clients
    for client in clients:
        client.close()


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(NAME, min_size=2, max_size=5), host=HOST)
def test_gitlab_project_paths_round_trip(gitlab_clients: list[GitLabForge], host: str, parts: list[str]) -> None:
    path = "/".join(parts)
    for client in gitlab_clients:
        for url in clone_urls(host, path):
            assert client.project(url) == "/projects/" + path.replace("/", "%2F"), url


def test_gitlab_relative_url_root_is_taken_off(tmp_path: Path) -> None:
    client = GitLabForge(ForgeConfig("gl", "gitlab", "https://host/gitlab/api/v4", token_file(tmp_path, "t")))
    assert client.project("https://host/gitlab/group/sub/infra.git") == "/projects/group%2Fsub%2Finfra"
    assert client.project("git@host:gitlab/infra.git") == "/projects/gitlab%2Finfra"
    client.close()


@settings(max_examples=40, deadline=None)
@given(HOST, st.from_regex(r"~?[A-Za-z][A-Za-z0-9_]{0,9}", fullmatch=True), NAME)
def test_bitbucket_project_and_slug_round_trip(host: str, project: str, slug: str) -> None:
    key = project.lower() if project.startswith("~") else project.upper()
    for url in [*clone_urls(host, f"scm/{project.lower()}/{slug}"), f"ssh://git@{host}:7999/{project}/{slug}.git"]:
        assert project_and_slug(url) == (key, slug), url
    assert project_and_slug(f"https://{host}/context/scm/{project}/{slug}.git") == (key, slug)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600), st.integers(min_value=80, max_value=400), st.booleans())
def test_any_body_is_cut_within_the_limit_and_keeps_the_marker(text: str, limit: int, marker_last: bool) -> None:
    body = text + MARKER if marker_last else MARKER + text
    cut = cut_comment(body, limit, MARKER)
    assert units(cut) <= limit
    assert MARKER in cut
    if units(body) <= limit:
        assert cut == body
    else:
        assert CUT_NOTE in cut


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.integers(min_value=1, max_value=300))
def test_any_description_is_cut_within_the_limit(text: str, limit: int) -> None:
    cut = cut_line(text, limit)
    assert units(cut) <= limit
    assert cut == text or cut.endswith("…")
