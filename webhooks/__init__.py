"""Webhook receivers: verify a forge's push or pull request notification and turn it into a ``Delivery``.

One module per forge, each verifying exactly as that forge documents and comparing in constant time:

    github            X-Hub-Signature-256: sha256=HMAC-SHA256(secret, body); X-GitHub-Event; X-GitHub-Delivery
    gitea             X-Gitea-Signature (or X-Forgejo-Signature): hex HMAC-SHA256; X-Gitea-Event; X-Gitea-Delivery
    gitlab            X-Gitlab-Token: the secret itself; X-Gitlab-Event: Push Hook | Merge Request Hook
    bitbucket_server  X-Hub-Signature: sha256=HMAC-SHA256; X-Event-Key: repo:refs_changed | pr:...; X-Request-Id
    generic_hmac      X-Signature: sha256=HMAC-SHA256; body {"repository": URL, "ref": "refs/heads/B"}

Events: "push" (``Delivery.moved`` and ``Delivery.deleted``), "ping", ``PULL_REQUEST`` (preview it),
``PULL_REQUEST_CLOSED`` (stop its preview), ``PULL_REQUEST_IGNORED``; anything else is the forge's event name.

The receivers are pure: bytes and headers in, a ``Delivery`` out, or ``Rejected`` with the HTTP status to answer.
Beside each receiver is its forge's API client (``github_api``, ``gitlab_api``, ``gitea_api``,
``bitbucket_server_api``, with what they share in ``forge``): commit statuses, one comment per pull request, open
pull requests, over HTTP (httpx) with retries. Each forge's knowledge is so in one place.
"""

from __future__ import annotations

from webhooks.base import (
    PING,
    PULL_REQUEST,
    PULL_REQUEST_CLOSED,
    PULL_REQUEST_IGNORED,
    PUSH,
    Delivery,
    Rejected,
    same_project_slug,
    same_repository,
)
from webhooks.registry import KINDS, receive

__all__ = [
    "KINDS",
    "PING",
    "PULL_REQUEST",
    "PULL_REQUEST_CLOSED",
    "PULL_REQUEST_IGNORED",
    "PUSH",
    "Delivery",
    "Rejected",
    "receive",
    "same_project_slug",
    "same_repository",
]
