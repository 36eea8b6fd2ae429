"""Bitbucket Server and Data Center: REST API 1.0 and build-status 1.0 (``api_url`` the server's base URL, e.g.
https://bitbucket.example.com, with its context path if it has one).

Limits:
  - comment ``text``: fewer than 32,768 characters, so 32,767: Bitbucket answers a longer one 400 "Please enter a
    non-empty value less than 32768 characters" (context ``text``). Java counts UTF-16 units, as ``units`` does.
  - build status: ``key`` and ``name`` 255 characters, ``url`` 450, ``description`` 255 (Atlassian's "Updating
    build status for commits"; BSERV-12804 reports the 255 of ``name``).

Endpoints: ``POST /rest/build-status/1.0/commits/{sha}`` with ``key`` = the context, ``name``, ``url`` (required:
the target URL, else the commit's web page) and states INPROGRESS, SUCCESSFUL, FAILED;
``GET /rest/api/1.0/projects/{key}/repos/{slug}/pull-requests/{id}/activities`` (comments are the ``COMMENTED``
activities), ``POST .../pull-requests/{id}/comments``, and ``GET`` then ``PUT .../comments/{commentId}`` with the
comment's current ``version`` (409 when it changed meanwhile: read again, write again);
``GET .../pull-requests?state=OPEN&at=refs/heads/B&direction=INCOMING``. Token: ``Authorization: Bearer``.

A repository URL gives the project key and slug: ``https://HOST/scm/PROJ/repo.git``,
``ssh://git@HOST:7999/proj/repo.git`` (project keys are upper case; personal projects are ``~user``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from webhooks.forge import (
    Comment,
    ForgeError,
    HttpForge,
    PullRequest,
    check_sha,
    check_state,
    cut_line,
    quote,
    repository_path,
    units,
)

STATE = {"pending": "INPROGRESS", "success": "SUCCESSFUL", "failure": "FAILED", "error": "FAILED"}
PAGE = 100
KEY_LIMIT = 255
NAME_LIMIT = 255
URL_LIMIT = 450


def project_and_slug(repository: str) -> tuple[str, str]:
    """The project key and repository slug of a Bitbucket clone URL: its last two path segments, whether it is
    ``https://HOST[/CONTEXT]/scm/PROJ/repo.git`` or ``ssh://git@HOST:7999/proj/repo.git``."""
    _, segments = repository_path(repository)
    if len(segments) < 2:
        raise ValueError(f"{repository!r} does not end in PROJECT/repository")
    project, slug = segments[-2], segments[-1]
    return (project.lower() if project.startswith("~") else project.upper()), slug


class BitbucketServerForge(HttpForge):
    kind = "bitbucket_server"
    comment_limit = 32_767
    description_limit = 255

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def names(self, repository: str) -> tuple[str, str]:
        try:
            return project_and_slug(repository)
        except ValueError as err:
            raise ForgeError(f"forge {self.config.name}: {err}") from None

    def repo(self, repository: str) -> str:
        project, slug = self.names(repository)
        return f"/rest/api/1.0/projects/{quote(project)}/repos/{quote(slug)}"

    def commit_url(self, repository: str, sha: str) -> str:
        project, slug = self.names(repository)
        return f"{self.base_url}/projects/{quote(project)}/repos/{quote(slug)}/commits/{sha}"

    def set_status(
        self,
        repository: str,
        sha: str,
        state: str,
        context: str,
        description: str,
        target_url: str | None = None,
    ) -> None:
        sha = check_sha(sha)
        if not context or units(context) > KEY_LIMIT:
            raise ValueError(f"the context {context!r} must be 1 to {KEY_LIMIT} characters: it is Bitbucket's key")
        url = target_url if target_url and units(target_url) <= URL_LIMIT else self.commit_url(repository, sha)
        payload = {
            "state": STATE[check_state(state)],
            "key": context,
            "name": cut_line(context, NAME_LIMIT),
            "url": url,
            "description": cut_line(description, self.description_limit),
        }
        self.names(repository)  # a malformed repository URL fails before the request, as elsewhere
        self.request("POST", f"/rest/build-status/1.0/commits/{sha}", json=payload)

    def list_comments(self, repository: str, number: int) -> Iterator[Comment]:
        path = f"{self.repo(repository)}/pull-requests/{number}/activities"
        seen: set[int] = set()
        for page in self.get_pages(path, {"start": 0, "limit": PAGE}, _next_start):
            for activity in _values(page):
                comment = activity.get("comment")
                if activity.get("action") != "COMMENTED" or not isinstance(comment, dict):
                    continue
                if activity.get("commentAction") not in (None, "ADDED"):
                    continue  # replies and deletions
                cid, text, version = comment.get("id"), comment.get("text"), comment.get("version", 0)
                if isinstance(cid, int) and isinstance(text, str) and isinstance(version, int) and cid not in seen:
                    seen.add(cid)
                    yield Comment(cid, text, version)

    def create_comment(self, repository: str, number: int, body: str) -> None:
        path = f"{self.repo(repository)}/pull-requests/{number}/comments"
        self.request("POST", path, json={"text": body}, repeatable=False)

    def edit_comment(self, repository: str, number: int, comment: Comment, body: str) -> None:
        """Read the comment's current version first: an activity may show an older one than the comment has."""
        path = f"{self.repo(repository)}/pull-requests/{number}/comments/{comment.id}"
        current = self.json(self.request("GET", path), "GET", path)
        version = current.get("version") if isinstance(current, dict) else None
        if not isinstance(version, int):
            raise self._error("GET", path, 200, "the comment has no version")
        if current.get("text") == body:
            return
        self.request("PUT", path, json={"text": body, "version": version})

    def open_pull_requests(self, repository: str, base_branch: str) -> list[PullRequest]:
        path = f"{self.repo(repository)}/pull-requests"
        params: dict[str, str | int] = {
            "state": "OPEN",
            "at": f"refs/heads/{base_branch}",
            "direction": "INCOMING",
            "order": "OLDEST",
            "start": 0,
            "limit": PAGE,
        }
        found: dict[int, PullRequest] = {}
        for page in self.get_pages(path, params, _next_start):
            for item in _values(page):
                pull = _pull(item)
                if pull is not None and pull.base_branch == base_branch:
                    found.setdefault(pull.number, pull)
        return list(found.values())


def _next_start(response: httpx.Response, data: Any, query: dict[str, str | int]) -> dict[str, str | int] | None:
    """Bitbucket's paged APIs: ``isLastPage``, and ``nextPageStart`` for the next ``start``."""
    if not isinstance(data, dict) or data.get("isLastPage", True):
        return None
    following = data.get("nextPageStart")
    return {**query, "start": following} if isinstance(following, int) else None


def _values(page: Any) -> Iterator[dict[str, Any]]:
    values = page.get("values") if isinstance(page, dict) else None
    if isinstance(values, list):
        yield from (item for item in values if isinstance(item, dict))


def _repository_identity(ref: dict[str, Any]) -> object:
    repo = ref.get("repository")
    if not isinstance(repo, dict):
        return None
    if repo.get("id") is not None:
        return repo.get("id")
    project = repo.get("project")
    key = project.get("key") if isinstance(project, dict) else None
    return (key, repo.get("slug")) if key and repo.get("slug") else None


def _pull(item: dict[str, Any]) -> PullRequest | None:
    number, source, target = item.get("id"), item.get("fromRef"), item.get("toRef")
    if not isinstance(number, int) or not isinstance(source, dict) or not isinstance(target, dict):
        return None
    sha = source.get("latestCommit")
    if not isinstance(sha, str) or not sha:
        return None
    from_repo = _repository_identity(source)
    links = item.get("links")
    selves = links.get("self") if isinstance(links, dict) else None
    url = selves[0].get("href") if isinstance(selves, list) and selves and isinstance(selves[0], dict) else ""
    return PullRequest(
        number=number,
        head_sha=sha,
        base_branch=str(target.get("id") or "").removeprefix("refs/heads/"),
        head_ref=f"refs/pull-requests/{number}/from",
        from_fork=from_repo is None or from_repo != _repository_identity(target),
        title=str(item.get("title") or ""),
        url=str(url or ""),
    )
