"""GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; events ``push`` and ``ping``."""

from __future__ import annotations

from collections.abc import Mapping

from webhooks.base import Delivery, branch_push, check_hmac, header, json_body, text


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    check_hmac(header(headers, "X-Hub-Signature-256"), secret, body, prefix="sha256=", name="X-Hub-Signature-256")
    event = header(headers, "X-GitHub-Event") or ""
    delivery = header(headers, "X-GitHub-Delivery")
    data = json_body(body)
    if event != "push":
        return Delivery(event or "unknown", delivery)
    repo = data.get("repository") or {}
    return branch_push(
        data,
        delivery,
        text(repo, "clone_url"),
        text(repo, "ssh_url"),
        text(repo, "git_url"),
        text(repo, "html_url"),
    )
