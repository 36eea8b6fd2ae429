"""The receivers by kind, as the configuration names them."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from webhooks import bitbucket_server, generic_hmac, gitea, github, gitlab
from webhooks.base import Delivery

Receive = Callable[[Mapping[str, str], bytes, bytes], Delivery]

KINDS: dict[str, Receive] = {
    "github": github.receive,
    "gitea": gitea.receive,
    "gitlab": gitlab.receive,
    "bitbucket-server": bitbucket_server.receive,
    "generic-hmac": generic_hmac.receive,
}


def receive(kind: str, headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    """Verify and parse one delivery; raises ``Rejected``."""
    return KINDS[kind](headers, body, secret)
