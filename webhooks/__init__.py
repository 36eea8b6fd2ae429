"""Webhook receivers: verify a forge's push notification and turn it into a "source changed" event.

One module per forge, each verifying exactly as that forge documents and comparing in constant time:

    github            X-Hub-Signature-256: sha256=HMAC-SHA256(secret, body); X-GitHub-Event; X-GitHub-Delivery
    gitea             X-Gitea-Signature (or X-Forgejo-Signature): hex HMAC-SHA256; X-Gitea-Event; X-Gitea-Delivery
    gitlab            X-Gitlab-Token: the secret itself; X-Gitlab-Event: Push Hook; X-Gitlab-Event-UUID
    bitbucket_server  X-Hub-Signature: sha256=HMAC-SHA256; X-Event-Key: repo:refs_changed; X-Request-Id
    generic_hmac      X-Signature: sha256=HMAC-SHA256; body {"repository": URL, "ref": "refs/heads/B"}

Pure: bytes and headers in, a ``Delivery`` out, or ``Rejected`` with the HTTP status to answer.
"""

from __future__ import annotations

from webhooks.base import Delivery, Rejected, same_repository
from webhooks.registry import KINDS, receive

__all__ = ["KINDS", "Delivery", "Rejected", "receive", "same_repository"]
