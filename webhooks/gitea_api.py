"""Gitea and Forgejo, REST API v1 (``api_url`` https://HOST/api/v1).

Limits: Gitea documents none.
  - commit status ``description``: stored in a TEXT column (``models/git/commit_status.go``) and shown on one line;
    255 characters is chosen, as GitLab's and Bitbucket's limits, so it fits any database and reads whole.
  - comment ``body``: stored as LONGTEXT since Gitea 1.16 (migration 191, "Alter issue/comment table TEXT fields to
    LONGTEXT"; MySQL TEXT, 65,535 bytes, before). 65,536 characters is chosen, as GitHub's limit: a comment that
    renders in a browser, and a request body (at most 256 KiB of UTF-8) within the 1 MiB that reverse proxies
    such as nginx allow by default.

Endpoints: ``POST /repos/{owner}/{repo}/statuses/{sha}`` (states pending, success, error, failure, warning);
``GET|POST /repos/{owner}/{repo}/issues/{n}/comments`` (the listing is not paginated: Gitea answers every comment
at once) and ``PATCH /repos/{owner}/{repo}/issues/comments/{id}``; ``GET /repos/{owner}/{repo}/pulls?state=open``
(no base filter: filtered here). Token: ``Authorization: token``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from webhooks.forge import (
    Comment,
    ForgeError,
    HttpForge,
    PullRequest,
    check_sha,
    check_state,
    cut_line,
    owner_and_name,
    quote,
)

STATE = {"pending": "pending", "success": "success", "failure": "failure", "error": "error"}
PAGE = 50  # Gitea's default [api] MAX_RESPONSE_ITEMS


class GiteaForge(HttpForge):
    kind = "gitea"
    comment_limit = 65_536
    description_limit = 255

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"token {token}"}

    def repo(self, repository: str) -> str:
        try:
            owner, name = owner_and_name(repository)
        except ValueError as err:
            raise ForgeError(f"forge {self.config.name}: {err}") from None
        return f"/repos/{quote(owner)}/{quote(name)}"

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
            "context": context,
            "description": cut_line(description, self.description_limit),
        }
        if target_url:
            payload["target_url"] = target_url
        self.request("POST", f"{self.repo(repository)}/statuses/{check_sha(sha)}", json=payload)

    def list_comments(self, repository: str, number: int) -> Iterator[Comment]:
        path = f"{self.repo(repository)}/issues/{number}/comments"
        for page in self.link_pages(path, {}):
            for item in _items(page):
                if isinstance(item.get("id"), int) and isinstance(item.get("body"), str):
                    yield Comment(item["id"], item["body"])

    def create_comment(self, repository: str, number: int, body: str) -> None:
        self.request("POST", f"{self.repo(repository)}/issues/{number}/comments", json={"body": body}, repeatable=False)

    def edit_comment(self, repository: str, number: int, comment: Comment, body: str) -> None:
        self.request("PATCH", f"{self.repo(repository)}/issues/comments/{comment.id}", json={"body": body})

    def open_pull_requests(self, repository: str, base_branch: str) -> list[PullRequest]:
        path = f"{self.repo(repository)}/pulls"
        found: dict[int, PullRequest] = {}
        for page in self.link_pages(path, {"state": "open", "sort": "oldest", "limit": PAGE, "page": 1}):
            for item in _items(page):
                pull = _pull(item)
                if pull is not None and pull.base_branch == base_branch:
                    found.setdefault(pull.number, pull)
        return list(found.values())


def _items(page: Any) -> Iterator[dict[str, Any]]:
    if isinstance(page, list):
        yield from (item for item in page if isinstance(item, dict))


def _repo_id(side: dict[str, Any]) -> object:
    repo = side.get("repo")
    if isinstance(repo, dict) and repo.get("id") is not None:
        return repo.get("id")
    return side.get("repo_id")


def _pull(item: dict[str, Any]) -> PullRequest | None:
    number, head, base = item.get("number"), item.get("head"), item.get("base")
    if not isinstance(number, int) or not isinstance(head, dict) or not isinstance(base, dict):
        return None
    sha = head.get("sha")
    if not isinstance(sha, str) or not sha:
        return None
    head_repo = _repo_id(head)
    return PullRequest(
        number=number,
        head_sha=sha,
        base_branch=str(base.get("ref") or "").removeprefix("refs/heads/"),
        head_ref=f"refs/pull/{number}/head",
        from_fork=head_repo is None or head_repo != _repo_id(base),
        title=str(item.get("title") or ""),
        url=str(item.get("html_url") or ""),
    )
