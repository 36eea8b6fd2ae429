"""GitLab: ``X-Gitlab-Token`` carries the secret itself; ``X-Gitlab-Event: Push Hook`` or ``Merge Request Hook``.

Merge request actions ``open``, ``reopen``, ``update`` with new commits (``oldrev`` present) or a new target branch
ask for a preview; ``close`` and ``merge`` end one; every other action (approvals, label or title edits) is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhooks.base import (
    PULL_REQUEST,
    PULL_REQUEST_CLOSED,
    PULL_REQUEST_IGNORED,
    Delivery,
    Rejected,
    branch_push,
    check_token,
    different,
    dig,
    header,
    integer,
    json_body,
    pull_request,
    text,
    urls,
)


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    check_token(header(headers, "X-Gitlab-Token"), secret, name="X-Gitlab-Token")
    event = header(headers, "X-Gitlab-Event") or ""
    # Idempotency-Key stays the same across GitLab's retries of one delivery; X-Gitlab-Event-UUID is shared by
    # the hooks of one event, so it is only a fallback.
    delivery = header(headers, "Idempotency-Key") or header(headers, "X-Gitlab-Event-UUID")
    data = json_body(body)
    if event == "Merge Request Hook":
        return _merge_request(data, delivery)
    if event != "Push Hook":
        return Delivery(event or "unknown", delivery)
    repo = data.get("repository")
    return branch_push(
        data,
        delivery,
        *_urls(data.get("project")),
        text(repo, "git_http_url"),
        text(repo, "git_ssh_url"),
    )


def _urls(project: Any) -> tuple[str, ...]:
    return urls(text(project, "git_http_url"), text(project, "git_ssh_url"), text(project, "web_url"))


def _merge_request(data: dict[str, Any], delivery: str | None) -> Delivery:
    attributes = data.get("object_attributes")
    if not isinstance(attributes, dict):
        raise Rejected(400, "a Merge Request Hook payload must have an `object_attributes` object")
    action = text(attributes, "action")
    if (
        action in ("open", "reopen")
        or (action == "update" and text(attributes, "oldrev"))
        or (action == "update" and isinstance(dig(data, "changes", "target_branch"), dict))
    ):
        event = PULL_REQUEST
    elif action in ("close", "merge"):
        event = PULL_REQUEST_CLOSED
    else:
        event = PULL_REQUEST_IGNORED
    number = integer(attributes, "iid")
    return pull_request(
        event,
        delivery,
        action=action,
        number=number,
        head_sha=text(attributes, "last_commit", "id"),
        base_branch=text(attributes, "target_branch"),
        repositories=urls(*_urls(data.get("project")), *_urls(attributes.get("target"))),
        head_repositories=_urls(attributes.get("source")),
        head_branch=text(attributes, "source_branch"),
        head_ref=f"refs/merge-requests/{number}/head",
        fork=different(attributes.get("source_project_id"), attributes.get("target_project_id")),
    )
