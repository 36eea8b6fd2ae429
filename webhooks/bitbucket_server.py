"""Bitbucket Server / Data Center: ``X-Hub-Signature: sha256=<hex HMAC-SHA256>``; ``X-Event-Key``."""

from __future__ import annotations

from collections.abc import Mapping

from webhooks.base import Delivery, Rejected, check_hmac, header, json_body, text, urls


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    check_hmac(header(headers, "X-Hub-Signature"), secret, body, prefix="sha256=", name="X-Hub-Signature")
    event = header(headers, "X-Event-Key") or ""
    delivery = header(headers, "X-Request-Id")
    data = json_body(body)
    if event == "diagnostics:ping":
        return Delivery("ping", delivery)
    if event != "repo:refs_changed":
        return Delivery(event or "unknown", delivery)
    changes = data.get("changes")
    if not isinstance(changes, list) or not changes or not isinstance(changes[0], dict):
        raise Rejected(400, "repo:refs_changed without changes")
    change = changes[0]
    clone = (data.get("repository") or {}).get("links", {}).get("clone", [])
    hrefs = tuple(c.get("href") for c in clone if isinstance(c, dict) and isinstance(c.get("href"), str))
    return Delivery("push", delivery, text(change, "ref", "id"), text(change, "toHash"), urls(*hrefs))
