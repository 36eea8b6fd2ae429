"""What every receiver shares: the result type, errors with their HTTP status, HMAC checks, URL matching."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Rejected(Exception):
    """The request is refused; ``status`` is the HTTP status to answer (401 signature, 400 malformed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Delivery:
    """A verified webhook delivery.

    ``event`` is "push" for a branch push, "ping" for a forge's test delivery, anything else is ignored.
    ``repositories`` holds every URL the payload gives for the repository (clone, ssh, web).
    """

    event: str
    delivery_id: str | None = None
    ref: str | None = None
    after: str | None = None
    repositories: tuple[str, ...] = ()
    refs: tuple[str, ...] = ()
    """Every ref the push moved, when it moved several (Bitbucket); else just ``ref``."""

    @property
    def moved(self) -> tuple[str, ...]:
        return self.refs or ((self.ref,) if self.ref else ())


def header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def hmac_sha256(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def check_hmac(given: str | None, secret: bytes, body: bytes, *, prefix: str, name: str) -> None:
    """Compare a hex HMAC-SHA256 signature header in constant time."""
    if not given:
        raise Rejected(401, f"missing {name} header")
    expected = prefix + hmac_sha256(secret, body)
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Rejected(401, f"{name} does not match the body signed with the configured secret")


def check_token(given: str | None, secret: bytes, *, name: str) -> None:
    if not given:
        raise Rejected(401, f"missing {name} header")
    if not hmac.compare_digest(given.encode(), secret.strip()):
        raise Rejected(401, f"{name} is not the configured secret")


def json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Rejected(400, "the body is not a JSON object")
    return data


def text(data: Mapping[str, Any], *path: str) -> str | None:
    value: Any = data
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, str) else None


def urls(*candidates: str | None) -> tuple[str, ...]:
    return tuple(u for u in candidates if u)


def branch_push(data: Mapping[str, Any], delivery: str | None, *repositories: str | None) -> Delivery:
    """A push delivery from a payload with top-level ``ref`` and ``after`` (GitHub, Gitea, GitLab)."""
    ref = text(data, "ref")
    if ref is None:
        raise Rejected(400, "a push payload must have a string `ref`")
    return Delivery("push", delivery, ref, text(data, "after"), urls(*repositories))


_SCP = re.compile(r"^(?:[^@/]+@)?([^:/]+):(.+)$")


def _key(url: str) -> str:
    """host/path of a repository URL, without scheme, user, port, ``.git`` or trailing slash, lower-cased host."""
    url = url.strip()
    if "://" in url:
        rest = url.split("://", 1)[1]
        host, _, path = rest.partition("/")
        host = host.rsplit("@", 1)[-1].split(":")[0]
    else:
        match = _SCP.match(url)
        if match is None or url.startswith("/"):
            return url.rstrip("/").removesuffix(".git")
        host, path = match.group(1), match.group(2)
    return f"{host.lower()}/{path.strip('/').removesuffix('.git')}"


def same_repository(configured: str, announced: tuple[str, ...]) -> bool:
    """Whether a payload's repository URLs name the configured repository (any protocol)."""
    key = _key(configured)
    return any(_key(url) == key for url in announced)
