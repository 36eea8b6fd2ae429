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
    if not isinstance(changes, list) or not changes or not all(isinstance(c, dict) for c in changes):
        raise Rejected(400, "repo:refs_changed without a list of changes")
    refs = tuple(r for r in (text(c, "ref", "id") for c in changes) if r)
    repository = data.get("repository")
    links = repository.get("links") if isinstance(repository, dict) else None
    clone = links.get("clone") if isinstance(links, dict) else None
    hrefs = (
        tuple(c["href"] for c in clone if isinstance(c, dict) and isinstance(c.get("href"), str))
        if isinstance(clone, list)
        else ()
    )
    return Delivery("push", delivery, refs[0] if refs else None, text(changes[0], "toHash"), urls(*hrefs), refs)
