"""Gitea and Forgejo: ``X-Gitea-Signature`` (or ``X-Forgejo-Signature``): hex HMAC-SHA256 of the body."""

from __future__ import annotations

from collections.abc import Mapping

from webhooks.base import Delivery, branch_push, check_hmac, header, json_body, text


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    signature = header(headers, "X-Gitea-Signature") or header(headers, "X-Forgejo-Signature")
    check_hmac(signature, secret, body, prefix="", name="X-Gitea-Signature")
    event = header(headers, "X-Gitea-Event") or header(headers, "X-Forgejo-Event") or ""
    delivery = header(headers, "X-Gitea-Delivery") or header(headers, "X-Forgejo-Delivery")
    data = json_body(body)
    if event != "push":
        return Delivery(event or "unknown", delivery)
    repo = data.get("repository") or {}
    return branch_push(
        data,
        delivery,
        text(repo, "clone_url"),
        text(repo, "ssh_url"),
        text(repo, "html_url"),
    )
