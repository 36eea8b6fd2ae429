"""What every receiver shares: the result type, errors with their HTTP status, HMAC checks, URL matching."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PUSH = "push"
PING = "ping"
PULL_REQUEST = "pull_request"
"""A pull request was opened or reopened, got new commits, or was retargeted: its plan should be previewed."""
PULL_REQUEST_CLOSED = "pull_request_closed"
"""A pull request was closed, merged, declined or deleted: a preview still running for it can stop."""
PULL_REQUEST_IGNORED = "pull_request_ignored"
"""Any other pull request activity (labels, reviews, comments, title edits): nothing to do."""


class Rejected(Exception):
    """The request is refused; ``status`` is the HTTP status to answer (401 signature, 400 malformed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Delivery:
    """A verified webhook delivery.

    ``event`` is "push" for a branch push, "ping" for a forge's test delivery, ``PULL_REQUEST``,
    ``PULL_REQUEST_CLOSED`` or ``PULL_REQUEST_IGNORED`` for pull (merge) request activity; anything else is
    ignored. ``repositories`` holds every URL the payload gives for the repository (clone, ssh, web); for a pull
    request, the BASE (target) repository's, so that it matches the configured repository like a push does.
    """

    event: str
    delivery_id: str | None = None
    ref: str | None = None
    after: str | None = None
    repositories: tuple[str, ...] = ()
    refs: tuple[str, ...] = ()
    """Every ref the push named, when it named several (Bitbucket); else just ``ref``."""
    deleted: tuple[str, ...] = ()
    """The refs the push deleted (GitHub ``deleted``, an all-zero new id, Bitbucket ``DELETE``): not in ``moved``."""
    number: int | None = None
    """The pull request's number (GitLab: the merge request's ``iid``; Bitbucket: its ``id``)."""
    head_sha: str | None = None
    """The commit at the pull request's head (hex, checked)."""
    base_branch: str | None = None
    """The branch the pull request targets, without ``refs/heads/``."""
    head_repositories: tuple[str, ...] = ()
    """The URLs of the repository the pull request's head is in (the fork's, for a pull request from a fork)."""
    action: str | None = None
    """The forge's own word for what happened (GitHub ``synchronize``, GitLab ``update``, ``pr:opened``...)."""
    head_branch: str | None = None
    """The pull request's source branch name, as the forge gives it (in the head repository)."""
    head_ref: str | None = None
    """The ref in the BASE repository that holds the pull request's head, fetchable without access to a fork:
    ``refs/pull/N/head`` (GitHub, Gitea), ``refs/merge-requests/N/head`` (GitLab),
    ``refs/pull-requests/N/from`` (Bitbucket)."""
    project_slug: tuple[str, str] | None = None
    """Bitbucket: the (project key, repository slug) of the repository (the base one, for a pull request)."""
    head_project_slug: tuple[str, str] | None = None
    """Bitbucket: the (project key, repository slug) of the pull request's head repository."""
    fork: bool | None = None
    """Whether the head is in another repository than the base, when the payload's repository ids tell."""

    @property
    def moved(self) -> tuple[str, ...]:
        """The refs the push moved to a commit (deleted refs left out)."""
        refs = self.refs or ((self.ref,) if self.ref else ())
        return tuple(r for r in refs if r not in self.deleted)

    @property
    def from_fork(self) -> bool:
        """Whether the pull request's head is in another repository than its base; True when the payload does not
        show that it is the same repository (a deleted fork, a payload without head repository)."""
        if self.fork is not None:
            return self.fork
        if self.project_slug is not None and self.head_project_slug is not None:
            return not _same_slug(self.project_slug, self.head_project_slug)
        if self.head_repositories and self.repositories:
            return not any(same_repository(url, self.repositories) for url in self.head_repositories)
        return True

    def matches(self, configured: str) -> bool:
        """Whether this delivery is about the configured repository: by URL, or (Bitbucket) by project and slug."""
        return same_repository(configured, self.repositories) or same_project_slug(configured, self.project_slug)


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
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Rejected(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Rejected(400, "the body is not a JSON object")
    return data


def text(data: Any, *path: str) -> str | None:
    value = dig(data, *path)
    return value if isinstance(value, str) else None


def integer(data: Any, *path: str) -> int | None:
    value = dig(data, *path)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def dig(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...``, or None where a step is not an object."""
    value: Any = data
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def urls(*candidates: str | None) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for url in candidates:
        if url:
            seen.setdefault(url)
    return tuple(seen)


def is_zero(commit: str | None) -> bool:
    """An all-zero object id: what forges put as the new commit of a deleted ref."""
    return bool(commit) and set(commit or "") == {"0"}


def branch_push(
    data: Mapping[str, Any], delivery: str | None, *repositories: str | None, deleted: bool = False
) -> Delivery:
    """A push delivery from a payload with top-level ``ref`` and ``after`` (GitHub, Gitea, GitLab)."""
    ref = text(data, "ref")
    if ref is None:
        raise Rejected(400, "a push payload must have a string `ref`")
    after = text(data, "after")
    gone = (ref,) if deleted or is_zero(after) else ()
    return Delivery(PUSH, delivery, ref, after, urls(*repositories), deleted=gone)


_SHA = re.compile(r"[0-9a-fA-F]{7,64}")
_PREVIEWS_NEED = {PULL_REQUEST: ("number", "head_sha", "base_branch"), PULL_REQUEST_CLOSED: ("number", "base_branch")}


def pull_request(
    event: str,
    delivery: str | None,
    *,
    action: str | None,
    number: int | None,
    head_sha: str | None,
    base_branch: str | None,
    repositories: tuple[str, ...],
    head_repositories: tuple[str, ...] = (),
    head_branch: str | None = None,
    head_ref: str | None = None,
    project_slug: tuple[str, str] | None = None,
    head_project_slug: tuple[str, str] | None = None,
    fork: bool | None = None,
) -> Delivery:
    """A pull request delivery; 400 when an event to act on lacks what acting needs, or its head is not a commit
    id (it ends up in a ``git fetch``)."""
    if base_branch is not None:
        base_branch = base_branch.removeprefix("refs/heads/")
    if head_sha is not None and not _SHA.fullmatch(head_sha):
        if event == PULL_REQUEST:
            raise Rejected(400, "the pull request's head commit is not a hexadecimal commit id")
        head_sha = None
    found = {"number": number, "head_sha": head_sha, "base_branch": base_branch or None}
    missing = [name for name in _PREVIEWS_NEED.get(event, ()) if found[name] is None]
    if missing:
        raise Rejected(400, f"a pull request payload ({action or 'no action'}) must give {', '.join(missing)}")
    return Delivery(
        event,
        delivery,
        repositories=repositories,
        number=number,
        head_sha=head_sha,
        base_branch=base_branch or None,
        head_repositories=head_repositories,
        action=action,
        head_branch=head_branch,
        head_ref=head_ref if number is not None else None,
        project_slug=project_slug,
        head_project_slug=head_project_slug,
        fork=fork,
    )


def different(a: Any, b: Any) -> bool | None:
    """Whether two repository ids differ; None unless both are integers."""
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and not isinstance(b, bool):
        return a != b
    return None


_SCP = re.compile(r"^(?:[^@/]+@)?([^:/]+):(.+)$")


def _host_path(url: str) -> tuple[str, str] | None:
    """(lower-cased host, path) of a repository URL, without scheme, user, port; None for a local path."""
    url = url.strip()
    if "://" in url:
        rest = url.split("://", 1)[1]
        host, _, path = rest.partition("/")
        return host.rsplit("@", 1)[-1].split(":")[0].lower(), path
    match = _SCP.match(url)
    if match is None or url.startswith("/"):
        return None
    return match.group(1).lower(), match.group(2)


def _key(url: str) -> str:
    """host/path of a repository URL, without scheme, user, port, ``.git`` or trailing slash, lower-cased host."""
    parts = _host_path(url)
    if parts is None:
        return url.strip().rstrip("/").removesuffix(".git")
    host, path = parts
    return f"{host}/{path.strip('/').removesuffix('.git')}"


def same_repository(configured: str, announced: tuple[str, ...]) -> bool:
    """Whether a payload's repository URLs name the configured repository (any protocol)."""
    key = _key(configured)
    return any(_key(url) == key for url in announced)


def url_project_slug(url: str) -> tuple[str, str] | None:
    """The Bitbucket (project key, slug) a repository URL names: ``…/scm/<project>/<slug>.git`` (HTTP, also under a
    context path), ``ssh://…/<project>/<slug>.git``, or the web ``…/projects/<P>/repos/<slug>`` and
    ``…/users/<user>/repos/<slug>`` (project ``~user``); None for anything else."""
    parts = _host_path(url)
    if parts is None:
        return None
    segments = [s for s in parts[1].split("?")[0].strip("/").removesuffix(".git").split("/") if s]
    for i in range(len(segments) - 3):
        if segments[i] in ("projects", "users") and segments[i + 2] == "repos":
            owner = segments[i + 1] if segments[i] == "projects" else "~" + segments[i + 1]
            return owner, segments[i + 3]
    if len(segments) >= 3 and segments[-3].lower() == "scm":
        return segments[-2], segments[-1]
    if len(segments) == 2:
        return segments[0], segments[1]
    return None


def _same_slug(a: tuple[str, str], b: tuple[str, str]) -> bool:
    return a[0].lower() == b[0].lower() and a[1].lower() == b[1].lower()


def same_project_slug(configured: str, announced: tuple[str, str] | None) -> bool:
    """Whether a Bitbucket payload's (project key, slug) names the configured repository URL. Project keys are
    upper-case in payloads and lower-case in clone URLs, and slugs are lower-case: both compare case-insensitively.
    The payload names no host: the receiver's secret is what ties it to one Bitbucket."""
    if announced is None:
        return False
    mine = url_project_slug(configured)
    return mine is not None and _same_slug(mine, announced)


def bitbucket_repository(repository: Any) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    """The clone URLs and the (project key, slug) of a Bitbucket Server repository object; either may be empty."""
    clone = dig(repository, "links", "clone")
    hrefs = [c.get("href") for c in clone if isinstance(c, dict)] if isinstance(clone, list) else []
    key, slug = text(repository, "project", "key"), text(repository, "slug")
    return urls(*(h for h in hrefs if isinstance(h, str))), (key, slug) if key and slug else None
