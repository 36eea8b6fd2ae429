"""GitHub and GitHub Enterprise Server, REST API v3 (``api_url`` https://api.github.com or https://HOST/api/v3).

Limits, from GitHub's REST documentation:
  - commit status ``description``: 140 characters ("Create a commit status"; longer answers 422 "description is too
    long (maximum is 140 characters)");
  - issue comment ``body``: 65,536 characters (longer answers 422 "Body is too long (maximum is 65536 characters)").

Endpoints: ``POST /repos/{owner}/{repo}/statuses/{sha}``; ``GET|POST /repos/{owner}/{repo}/issues/{n}/comments``
and ``PATCH /repos/{owner}/{repo}/issues/comments/{id}`` (a pull request's conversation comments are its issue's);
``GET /repos/{owner}/{repo}/pulls?state=open&base=B``. Token: ``Authorization: Bearer``.
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
    items,
    owner_and_name,
    quote,
)

# GitHub's commit status states are the ones ``set_status`` takes.
STATE = {"pending": "pending", "success": "success", "failure": "failure", "error": "error"}
PAGE = 100  # GitHub's largest per_page


class GitHubForge(HttpForge):
    kind = "github"
    comment_limit = 65_536
    description_limit = 140

    def auth_headers(self, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }

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
        for page in self.link_pages(path, {"per_page": PAGE, "page": 1}):
            for item in items(page):
                if isinstance(item.get("id"), int) and isinstance(item.get("body"), str):
                    yield Comment(item["id"], item["body"])

    def create_comment(self, repository: str, number: int, body: str) -> None:
        self.request("POST", f"{self.repo(repository)}/issues/{number}/comments", json={"body": body}, repeatable=False)

    def edit_comment(self, repository: str, number: int, comment: Comment, body: str) -> None:
        self.request("PATCH", f"{self.repo(repository)}/issues/comments/{comment.id}", json={"body": body})

    def open_pull_requests(self, repository: str, base_branch: str) -> list[PullRequest]:
        path = f"{self.repo(repository)}/pulls"
        params: dict[str, str | int] = {"state": "open", "base": base_branch, "sort": "created", "direction": "asc"}
        params["per_page"] = PAGE
        found: dict[int, PullRequest] = {}
        for page in self.link_pages(path, {**params, "page": 1}):
            for item in items(page):
                pull = _pull(item)
                if pull is not None and pull.base_branch == base_branch:
                    found.setdefault(pull.number, pull)
        return list(found.values())


def _pull(item: dict[str, Any]) -> PullRequest | None:
    number, head, base = item.get("number"), item.get("head"), item.get("base")
    if not isinstance(number, int) or not isinstance(head, dict) or not isinstance(base, dict):
        return None
    sha = head.get("sha")
    if not isinstance(sha, str):
        return None
    head_repo, base_repo = head.get("repo"), base.get("repo")
    # head.repo is null when the fork was deleted: still a fork's pull request.
    same = isinstance(head_repo, dict) and isinstance(base_repo, dict) and head_repo.get("id") == base_repo.get("id")
    from_fork = not same
    return PullRequest(
        number=number,
        head_sha=sha,
        base_branch=str(base.get("ref") or ""),
        head_ref=f"refs/pull/{number}/head",
        from_fork=from_fork,
        title=str(item.get("title") or ""),
        url=str(item.get("html_url") or ""),
    )
