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

from webhooks.forge import Comment, PullRequest, items
from webhooks.github_api import GitHubForge

PAGE = 50  # Gitea's default [api] MAX_RESPONSE_ITEMS


class GiteaForge(GitHubForge):
    """Gitea's API follows GitHub's (the same paths for statuses and comments, the same states): what differs is
    the token header, the limits, paging, and the listing of pull requests (no base filter, repository ids)."""

    kind = "gitea"
    comment_limit = 65_536
    description_limit = 255

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"token {token}"}

    def list_comments(self, repository: str, number: int) -> Iterator[Comment]:
        path = f"{self.repo(repository)}/issues/{number}/comments"
        for page in self.link_pages(path, {}):
            for item in items(page):
                if isinstance(item.get("id"), int) and isinstance(item.get("body"), str):
                    yield Comment(item["id"], item["body"])

    def open_pull_requests(self, repository: str, base_branch: str) -> list[PullRequest]:
        path = f"{self.repo(repository)}/pulls"
        found: dict[int, PullRequest] = {}
        for page in self.link_pages(path, {"state": "open", "sort": "oldest", "limit": PAGE, "page": 1}):
            for item in items(page):
                pull = _pull(item)
                if pull is not None and pull.base_branch == base_branch:
                    found.setdefault(pull.number, pull)
        return list(found.values())


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
