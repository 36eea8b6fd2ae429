"""GitLab: ``X-Gitlab-Token`` carries the secret itself; ``X-Gitlab-Event: Push Hook``."""

from __future__ import annotations

from collections.abc import Mapping

from webhooks.base import Delivery, branch_push, check_token, header, json_body, text


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    check_token(header(headers, "X-Gitlab-Token"), secret, name="X-Gitlab-Token")
    event = header(headers, "X-Gitlab-Event") or ""
    # Idempotency-Key stays the same across GitLab's retries of one delivery; X-Gitlab-Event-UUID is shared by
    # the hooks of one event, so it is only a fallback.
    delivery = header(headers, "Idempotency-Key") or header(headers, "X-Gitlab-Event-UUID")
    data = json_body(body)
    if event != "Push Hook":
        return Delivery(event or "unknown", delivery)
    project = data.get("project") or {}
    repo = data.get("repository") or {}
    return branch_push(
        data,
        delivery,
        text(project, "git_http_url"),
        text(project, "git_ssh_url"),
        text(project, "web_url"),
        text(repo, "git_http_url"),
        text(repo, "git_ssh_url"),
    )
