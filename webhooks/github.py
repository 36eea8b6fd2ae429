"""GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; events ``push``, ``pull_request``, ``ping``.

``pull_request`` actions ``opened``, ``synchronize`` (new commits), ``reopened``, and ``edited`` with a changed base
branch ask for a preview; ``closed`` (merged or not) ends one; every other action is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from webhooks.base import (
    PING,
    PULL_REQUEST,
    PULL_REQUEST_CLOSED,
    PULL_REQUEST_IGNORED,
    Delivery,
    Rejected,
    branch_push,
    check_hmac,
    different,
    dig,
    header,
    integer,
    json_body,
    pull_request,
    text,
    urls,
)

PREVIEW_ACTIONS = ("opened", "synchronize", "reopened")


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    check_hmac(header(headers, "X-Hub-Signature-256"), secret, body, prefix="sha256=", name="X-Hub-Signature-256")
    event = header(headers, "X-GitHub-Event") or ""
    delivery = header(headers, "X-GitHub-Delivery")
    data = json_body(body)
    if event == "pull_request":
        return _pull_request(data, delivery)
    if event == "ping":
        return Delivery(PING, delivery)
    if event != "push":
        return Delivery(event or "unknown", delivery)
    return branch_push(data, delivery, *_urls(data.get("repository")), deleted=data.get("deleted") is True)


def _urls(repo: Any) -> tuple[str, ...]:
    return urls(text(repo, "clone_url"), text(repo, "ssh_url"), text(repo, "git_url"), text(repo, "html_url"))


def _pull_request(data: dict[str, Any], delivery: str | None) -> Delivery:
    pr = data.get("pull_request")
    head_repo = dig(pr, "head", "repo")  # null for a deleted fork
    fork = different(dig(head_repo, "id"), dig(pr, "base", "repo", "id")) if isinstance(head_repo, dict) else True
    return pull_request_delivery(data, delivery, PREVIEW_ACTIONS, retarget="base", urls_of=_urls, fork=fork)


def pull_request_delivery(
    data: dict[str, Any],
    delivery: str | None,
    preview_actions: tuple[str, ...],
    *,
    retarget: str,
    urls_of: Callable[[Any], tuple[str, ...]],
    fork: bool | None,
) -> Delivery:
    """A ``pull_request`` payload in GitHub's shape (Gitea's and Forgejo's follow it): ``preview_actions`` ask for
    a preview, and so does ``edited`` whose ``changes`` name ``retarget`` (a new target branch)."""
    pr = data.get("pull_request")
    if not isinstance(pr, dict):
        raise Rejected(400, "a pull_request payload must have a `pull_request` object")
    action = text(data, "action")
    if action in preview_actions or (action == "edited" and isinstance(dig(data, "changes", retarget), dict)):
        event = PULL_REQUEST
    elif action == "closed":
        event = PULL_REQUEST_CLOSED
    else:
        event = PULL_REQUEST_IGNORED
    number = integer(pr, "number")
    if number is None:
        number = integer(data, "number")
    return pull_request(
        event,
        delivery,
        action=action,
        number=number,
        head_sha=text(pr, "head", "sha"),
        base_branch=text(pr, "base", "ref"),
        repositories=urls(*urls_of(dig(pr, "base", "repo")), *urls_of(data.get("repository"))),
        head_repositories=urls_of(dig(pr, "head", "repo")),
        head_branch=text(pr, "head", "ref"),
        head_ref=f"refs/pull/{number}/head",
        fork=fork,
    )
