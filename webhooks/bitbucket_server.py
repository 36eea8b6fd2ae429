"""Bitbucket Server / Data Center: ``X-Hub-Signature: sha256=<hex HMAC-SHA256>``; ``X-Event-Key``.

``repo:refs_changed`` is a push (a change of type ``DELETE`` deletes its ref). ``pr:opened``,
``pr:from_ref_updated`` (new commits) and ``pr:modified`` with a new target branch ask for a preview;
``pr:merged``, ``pr:declined`` and ``pr:deleted`` end one; other ``pr:`` events are ignored.

Bitbucket's "Test connection" button sends ``diagnostics:ping`` without a signature even when the webhook has a
secret: it is answered as a ping (which triggers nothing) whether signed or not; a ping that is signed must be
signed right. Every other event must be signed.

Repositories often come without ``links`` (the examples of Atlassian's own documentation have none), so the
delivery also carries each repository's (project key, slug), matched by ``base.same_project_slug``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhooks.base import (
    PING,
    PULL_REQUEST,
    PULL_REQUEST_CLOSED,
    PULL_REQUEST_IGNORED,
    PUSH,
    Delivery,
    Rejected,
    bitbucket_repository,
    check_hmac,
    different,
    dig,
    header,
    integer,
    is_zero,
    json_body,
    pull_request,
    text,
)

PREVIEW_EVENTS = ("pr:opened", "pr:from_ref_updated")
CLOSED_EVENTS = ("pr:merged", "pr:declined", "pr:deleted")


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    event = header(headers, "X-Event-Key") or ""
    delivery = header(headers, "X-Request-Id")
    signature = header(headers, "X-Hub-Signature")
    if event == "diagnostics:ping" and not signature:
        return Delivery(PING, delivery)  # unsigned: answered, never acted on, the body not even read
    check_hmac(signature, secret, body, prefix="sha256=", name="X-Hub-Signature")
    if event == "diagnostics:ping":
        return Delivery(PING, delivery)
    data = json_body(body)
    if event == "repo:refs_changed":
        return _push(data, delivery)
    if event.startswith("pr:"):
        return _pull_request(event, data, delivery)
    return Delivery(event or "unknown", delivery)


def _push(data: dict[str, Any], delivery: str | None) -> Delivery:
    changes = data.get("changes")
    if not isinstance(changes, list) or not changes or not all(isinstance(c, dict) for c in changes):
        raise Rejected(400, "repo:refs_changed without a list of changes")
    named = [(text(c, "ref", "id") or text(c, "refId"), c) for c in changes]
    refs = tuple(ref for ref, _ in named if ref)
    deleted = tuple(ref for ref, c in named if ref and (text(c, "type") == "DELETE" or is_zero(text(c, "toHash"))))
    first = next(((ref, c) for ref, c in named if ref and ref not in deleted), None) or named[0]
    repositories, slug = bitbucket_repository(data.get("repository"))
    return Delivery(
        PUSH,
        delivery,
        first[0],
        text(first[1], "toHash"),
        repositories,
        refs,
        deleted=deleted,
        project_slug=slug,
    )


def _pull_request(event: str, data: dict[str, Any], delivery: str | None) -> Delivery:
    pr = data.get("pullRequest")
    if not isinstance(pr, dict):
        if event in PREVIEW_EVENTS or event in CLOSED_EVENTS:
            raise Rejected(400, f"{event} without a `pullRequest` object")
        return Delivery(PULL_REQUEST_IGNORED, delivery, action=event)
    from_ref, to_ref = pr.get("fromRef"), pr.get("toRef")
    if event in PREVIEW_EVENTS or (event == "pr:modified" and _retargeted(data.get("previousTarget"), to_ref)):
        kind = PULL_REQUEST
    elif event in CLOSED_EVENTS:
        kind = PULL_REQUEST_CLOSED
    else:
        kind = PULL_REQUEST_IGNORED
    base_urls, base_slug = bitbucket_repository(dig(to_ref, "repository"))
    head_urls, head_slug = bitbucket_repository(dig(from_ref, "repository"))
    number = integer(pr, "id")
    to_id = text(to_ref, "id")
    return pull_request(
        kind,
        delivery,
        action=event,
        number=number,
        head_sha=text(from_ref, "latestCommit"),
        base_branch=to_id if to_id and to_id.startswith("refs/heads/") else text(to_ref, "displayId"),
        repositories=base_urls,
        head_repositories=head_urls,
        head_branch=text(from_ref, "displayId"),
        head_ref=f"refs/pull-requests/{number}/from",
        project_slug=base_slug,
        head_project_slug=head_slug,
        fork=different(dig(from_ref, "repository", "id"), dig(to_ref, "repository", "id")),
    )


def _retargeted(previous: Any, to_ref: Any) -> bool:
    """``pr:modified`` names ``previousTarget`` when the target branch changed."""
    before = text(previous, "id") or text(previous, "displayId")
    return bool(before) and before not in (text(to_ref, "id"), text(to_ref, "displayId"))
