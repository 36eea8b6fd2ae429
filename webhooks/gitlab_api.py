"""GitLab, REST API v4 (``api_url`` https://HOST/api/v4, or https://HOST/PREFIX/api/v4 under a relative URL root).

Limits, from GitLab's API documentation:
  - commit status ``description``: 255 characters ("Set the pipeline status of a commit": "Must be 255 characters or
    fewer"; ``target_url`` too, so a longer target URL is left out rather than refused);
  - note ``body``: 1,000,000 characters ("Notes API"; ``Note`` validates ``Gitlab::Database::MAX_TEXT_SIZE_LIMIT``).

Endpoints: ``POST /projects/:id/statuses/:sha`` with ``name`` = the context, states pending, running, success,
failed, canceled (``failure`` and ``error`` both become ``failed``);
``GET|POST /projects/:id/merge_requests/:iid/notes`` and ``PUT .../notes/:note_id``;
``GET /projects/:id/merge_requests?state=opened&target_branch=B``.
``:id`` is the project's URL-encoded path (``group%2Fsub%2Fproject``). Token: ``PRIVATE-TOKEN``.

GitLab refuses to set a status to the state it already has while it is pending or running ("Cannot transition
status via :enqueue from :pending"): that answer means the status is already what was asked, and is taken so.
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
    items,
    quote,
    repository_path,
    units,
)

STATE = {"pending": "pending", "success": "success", "failure": "failed", "error": "failed"}
PAGE = 100  # GitLab's largest per_page
TARGET_URL_LIMIT = 255


class GitLabForge(HttpForge):
    kind = "gitlab"
    comment_limit = 1_000_000
    description_limit = 255

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"PRIVATE-TOKEN": token}

    def project(self, repository: str) -> str:
        """``/projects/<url-encoded path>``; a relative URL root that ``api_url`` shows is taken off https paths."""
        try:
            scheme, segments = repository_path(repository)
        except ValueError as err:
            raise ForgeError(f"forge {self.config.name}: {err}") from None
        root = [s for s in httpx.URL(self.base_url).path.split("/") if s]
        if root[-2:] == ["api", "v4"]:
            root = root[:-2]
        if scheme in ("http", "https") and root and segments[: len(root)] == root and len(segments) > len(root) + 1:
            segments = segments[len(root) :]
        if len(segments) < 2:
            raise ForgeError(f"forge {self.config.name}: {repository!r} does not name a group/project path")
        return f"/projects/{quote('/'.join(segments))}"

    def set_status(
        self,
        repository: str,
        sha: str,
        state: str,
        context: str,
        description: str,
        target_url: str | None = None,
    ) -> None:
        payload: dict[str, Any] = {
            "state": STATE[check_state(state)],
            "name": context,
            "description": cut_line(description, self.description_limit),
        }
        if target_url and units(target_url) <= TARGET_URL_LIMIT:
            payload["target_url"] = target_url
        try:
            self.request("POST", f"{self.project(repository)}/statuses/{check_sha(sha)}", json=payload)
        except ForgeError as err:
            if err.status == 400 and "Cannot transition status" in err.detail:
                return  # already in that state
            raise

    def notes_path(self, repository: str, number: int) -> str:
        return f"{self.project(repository)}/merge_requests/{number}/notes"

    def list_comments(self, repository: str, number: int) -> Iterator[Comment]:
        params: dict[str, str | int] = {"sort": "asc", "order_by": "created_at", "per_page": PAGE, "page": 1}
        for page in self.get_pages(self.notes_path(repository, number), params, _next_page):
            for item in items(page):
                if item.get("system"):
                    continue  # GitLab's own notes ("added 1 commit"): never ours
                if isinstance(item.get("id"), int) and isinstance(item.get("body"), str):
                    yield Comment(item["id"], item["body"])

    def create_comment(self, repository: str, number: int, body: str) -> None:
        self.request("POST", self.notes_path(repository, number), json={"body": body}, repeatable=False)

    def edit_comment(self, repository: str, number: int, comment: Comment, body: str) -> None:
        self.request("PUT", f"{self.notes_path(repository, number)}/{comment.id}", json={"body": body})

    def open_pull_requests(self, repository: str, base_branch: str) -> list[PullRequest]:
        path = f"{self.project(repository)}/merge_requests"
        params: dict[str, str | int] = {
            "state": "opened",
            "target_branch": base_branch,
            "order_by": "created_at",
            "sort": "asc",
            "per_page": PAGE,
            "page": 1,
        }
        found: dict[int, PullRequest] = {}
        for page in self.get_pages(path, params, _next_page):
            for item in items(page):
                pull = _merge_request(item)
                if pull is not None and pull.base_branch == base_branch:
                    found.setdefault(pull.number, pull)
        return list(found.values())


def _next_page(response: httpx.Response, data: Any, query: dict[str, str | int]) -> dict[str, str | int] | None:
    """GitLab's offset pagination: ``X-Next-Page`` (empty on the last page), else a ``Link`` ``rel="next"``."""
    following = response.headers.get("x-next-page")
    if following is not None:
        following = following.strip()
        return {**query, "page": int(following)} if following.isdigit() else None
    if "next" in response.links:
        return {**query, "page": int(query.get("page", 1)) + 1}
    return None


def _merge_request(item: dict[str, Any]) -> PullRequest | None:
    iid, sha = item.get("iid"), item.get("sha")
    if not isinstance(iid, int) or not isinstance(sha, str) or not sha:
        return None  # a merge request whose head GitLab has not computed yet
    source, target = item.get("source_project_id"), item.get("target_project_id")
    return PullRequest(
        number=iid,
        head_sha=sha,
        base_branch=str(item.get("target_branch") or ""),
        head_ref=f"refs/merge-requests/{iid}/head",
        from_fork=source is None or source != target,
        title=str(item.get("title") or ""),
        url=str(item.get("web_url") or ""),
    )
