"""Gitea and Forgejo: ``X-Gitea-Signature`` (or ``X-Forgejo-Signature``): hex HMAC-SHA256 of the body.

Events ``push`` and ``pull_request`` (``X-Gitea-Event`` or ``X-Forgejo-Event``). Pull request actions ``opened``,
``synchronized`` (new commits), ``reopened``, and ``edited`` with a changed target branch ask for a preview;
``closed`` (merged or not) ends one; every other action is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhooks.base import Delivery, branch_push, check_hmac, different, dig, header, json_body, text, urls
from webhooks.github import pull_request_delivery

PREVIEW_ACTIONS = ("opened", "synchronized", "reopened")


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    signature = header(headers, "X-Gitea-Signature") or header(headers, "X-Forgejo-Signature")
    check_hmac(signature, secret, body, prefix="", name="X-Gitea-Signature")
    event = header(headers, "X-Gitea-Event") or header(headers, "X-Forgejo-Event") or ""
    delivery = header(headers, "X-Gitea-Delivery") or header(headers, "X-Forgejo-Delivery")
    data = json_body(body)
    if event == "pull_request":
        return _pull_request(data, delivery)
    if event != "push":
        return Delivery(event or "unknown", delivery)
    return branch_push(data, delivery, *_urls(data.get("repository")))


def _urls(repo: Any) -> tuple[str, ...]:
    return urls(text(repo, "clone_url"), text(repo, "ssh_url"), text(repo, "html_url"))


def _pull_request(data: dict[str, Any], delivery: str | None) -> Delivery:
    pr = data.get("pull_request")
    fork = different(dig(pr, "head", "repo_id"), dig(pr, "base", "repo_id"))
    if fork is None:
        fork = different(dig(pr, "head", "repo", "id"), dig(pr, "base", "repo", "id"))
    return pull_request_delivery(data, delivery, PREVIEW_ACTIONS, retarget="ref", urls_of=_urls, fork=fork)
