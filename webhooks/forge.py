"""Forge API clients: commit statuses, one comment per pull request, open pull requests.

One client per forge, each beside that forge's webhook receiver:

    github_api            GitHub and GitHub Enterprise, REST v3    api_url https://api.github.com | https://ghe.example.com/api/v3
    gitlab_api            GitLab, REST v4                          api_url https://gitlab.example.com/api/v4
    gitea_api             Gitea and Forgejo, REST v1               api_url https://gitea.example.com/api/v1
    bitbucket_server_api  Bitbucket Server / Data Center,          api_url https://bitbucket.example.com (the base URL,
                          REST 1.0 and build-status 1.0                    with its context path if it has one)

This module holds what they share: the types, the error, the cutting of texts to a forge's limits, the parsing of
repository URLs, and the HTTP layer, which sets a timeout on every request and retries 5xx answers, connection
failures and rate limits (``Retry-After`` in seconds or as an HTTP date, GitHub's ``x-ratelimit-reset`` and
GitLab's ``RateLimit-Reset`` when nothing remains, 429 everywhere), within ``MAX_ATTEMPTS`` attempts and
``WAIT_BUDGET`` seconds of waiting for one call. Any other 4xx fails at once.

A request that creates something (a comment) is not repeated blindly when its fate is unknown (a 5xx or a
timeout after it was sent): ``upsert_comment`` lists the comments again first, so it never leaves two.

Errors are ``ForgeError``: they name the forge, the method, the path, the status and the forge's own error text,
and never the token (the token is in a header that no message shows, and it is masked in any text a forge echoes).
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type

STATES = ("pending", "success", "failure", "error")
"""The states ``set_status`` takes (GitHub's words); each client maps them to its forge's."""

KINDS = ("github", "gitlab", "gitea", "bitbucket_server")

CUT_NOTE = "… (cut: the full plan is in the status API)"
"""Closes a comment body cut at the forge's limit."""

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_ATTEMPTS = 5
WAIT_BUDGET = 60.0
"""Seconds of waiting between the attempts of one call, at most; a forge asking for longer fails the call at once."""
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 8.0
MAX_PAGES = 100
"""Pages read at most by one listing (100 pages of 100 comments or pull requests)."""
CREATE_ROUNDS = 3
USER_AGENT = "nixgitops"


@dataclass(frozen=True)
class PullRequest:
    """An open pull (merge) request, as the controller needs it to plan it."""

    number: int
    """GitHub, Gitea and Bitbucket: the number; GitLab: the merge request's ``iid``."""
    head_sha: str
    base_branch: str
    """The target branch's name, without ``refs/heads/``."""
    head_ref: str
    """The ref to fetch from the base repository: ``refs/pull/N/head`` (GitHub, Gitea),
    ``refs/merge-requests/N/head`` (GitLab), ``refs/pull-requests/N/from`` (Bitbucket)."""
    from_fork: bool
    """The head commit comes from another repository than the base one."""
    title: str = ""
    url: str = ""
    """The web page of the pull request."""


@dataclass(frozen=True)
class ForgeConfig:
    name: str
    kind: str
    """One of ``KINDS`` (``bitbucket-server``, the webhook receivers' spelling, is taken too)."""
    api_url: str
    token_file: Path


class ForgeError(Exception):
    """A forge call failed. The message never holds the token nor an Authorization header."""

    def __init__(
        self,
        message: str,
        *,
        forge: str = "",
        method: str = "",
        path: str = "",
        status: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.forge = forge
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail

    @classmethod
    def http(cls, forge: str, method: str, path: str, status: int | None, detail: str) -> ForgeError:
        answer = f"HTTP {status}" if status is not None else "no answer"
        return cls(
            f"forge {forge}: {method} {path}: {answer}: {detail}",
            forge=forge,
            method=method,
            path=path,
            status=status,
            detail=detail,
        )

    def adding(self, sentence: str) -> ForgeError:
        """The same error with one more sentence of detail."""
        return type(self).http(self.forge, self.method, self.path, self.status, f"{self.detail}; {sentence}")


class Forge(Protocol):
    config: ForgeConfig
    comment_limit: int
    description_limit: int

    def set_status(
        self,
        repository: str,
        sha: str,
        state: str,
        context: str,
        description: str,
        target_url: str | None = None,
    ) -> None: ...

    def upsert_comment(self, repository: str, number: int, marker: str, body: str) -> None: ...

    def open_pull_requests(self, repository: str, base_branch: str) -> list[PullRequest]: ...

    def close(self) -> None: ...


def open_forge(
    config: ForgeConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    timeout: httpx.Timeout | float = TIMEOUT,
) -> Forge:
    """The client for ``config.kind``; it reads the token file now. Close it when done."""
    from webhooks.bitbucket_server_api import BitbucketServerForge
    from webhooks.gitea_api import GiteaForge
    from webhooks.github_api import GitHubForge
    from webhooks.gitlab_api import GitLabForge

    classes: dict[str, type[HttpForge]] = {
        "github": GitHubForge,
        "gitlab": GitLabForge,
        "gitea": GiteaForge,
        "bitbucket_server": BitbucketServerForge,
        "bitbucket-server": BitbucketServerForge,
    }
    cls = classes.get(config.kind)
    if cls is None:
        raise ValueError(f"forge {config.name}: unknown kind {config.kind!r}; expected one of {', '.join(KINDS)}")
    return cls(config, transport=transport, sleep=sleep, timeout=timeout)


# --- texts --------------------------------------------------------------------------------------------------------


def units(text: str) -> int:
    """Length in UTF-16 code units: what Java (Bitbucket) counts, and never less than the code points that Ruby
    (GitHub, GitLab) counts, so a text within a limit by this count is within it by either."""
    return len(text.encode("utf-16-le")) // 2


def _prefix(text: str, limit: int) -> str:
    """The longest prefix of ``text`` of at most ``limit`` UTF-16 units, never splitting a character."""
    if limit <= 0:
        return ""
    if units(text) <= limit:
        return text
    return text.encode("utf-16-le")[: 2 * limit].decode("utf-16-le", errors="ignore")


def cut_line(text: str, limit: int) -> str:
    """``text`` within ``limit`` units, ending in "…" when cut (status descriptions)."""
    if units(text) <= limit:
        return text
    return _prefix(text, limit - 1).rstrip() + "…"


def cut_comment(body: str, limit: int, marker: str = "") -> str:
    """``body`` within ``limit`` units; when cut, it ends with ``CUT_NOTE`` and still holds ``marker``.

    A code fence left open by the cut is closed first, so the note shows as text.
    """
    if units(body) <= limit:
        return body
    note = "\n\n" + CUT_NOTE
    fence = "\n```"
    reserve = units(note) + units(fence)
    at = body.find(marker) if marker else 0
    kept_marker = at >= 0 and units(body[: at + len(marker)]) <= limit - reserve
    tail = "" if kept_marker else "\n" + marker
    room = limit - reserve - units(tail)
    if room < 0:
        raise ValueError(f"a limit of {limit} leaves no room for the cut note")
    kept = _prefix(body, room)
    return kept + (fence if kept.count("```") % 2 else "") + note + tail


# --- repository URLs ----------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCP = re.compile(r"^(?:[^@/]+@)?([^:/]+):(.+)$")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")


def repository_path(url: str) -> tuple[str, list[str]]:
    """``(scheme, segments)`` of a clone URL's path, without ``.git``: https, http, ssh:// or scp-like ``host:path``.

    ``scheme`` is ``""`` for the scp-like form. Raises ``ValueError`` when there is no path.
    """
    url = url.strip()
    scheme = ""
    if _SCHEME.match(url):
        scheme, rest = url.split("://", 1)
        path = rest.partition("/")[2]
        path = path.split("?", 1)[0].split("#", 1)[0]
    else:
        match = _SCP.match(url)
        if match is None:
            raise ValueError(f"{url!r} is not a repository URL (https://host/path, ssh://host/path or host:path)")
        path = match.group(2)
    path = path.strip("/").removesuffix(".git").rstrip("/")
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise ValueError(f"{url!r} names no repository path")
    return scheme.lower(), segments


def owner_and_name(url: str) -> tuple[str, str]:
    """The last two path segments of a clone URL: GitHub's and Gitea's ``owner/repo``."""
    _, segments = repository_path(url)
    if len(segments) < 2:
        raise ValueError(f"{url!r} does not end in owner/repository")
    return segments[-2], segments[-1]


def quote(segment: str) -> str:
    """Percent-encode everything but RFC 3986's unreserved characters (``/`` too: GitLab's ``group%2Fproject``)."""
    return "".join(c if c in _UNRESERVED else "".join(f"%{b:02X}" for b in c.encode()) for c in segment)


def check_sha(sha: str) -> str:
    if not _SHA.fullmatch(sha):
        raise ValueError(f"{sha!r} is not a full commit id (40 or 64 hex digits)")
    return sha.lower()


def check_state(state: str) -> str:
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
    return state


def read_token(config: ForgeConfig) -> str:
    try:
        token = config.token_file.read_text(encoding="utf-8").rstrip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise ForgeError(f"forge {config.name}: cannot read the token file {config.token_file}: {reason}") from None
    if not token:
        raise ForgeError(f"forge {config.name}: the token file {config.token_file} is empty")
    if any(c in token for c in "\r\n\0"):
        raise ForgeError(f"forge {config.name}: the token file {config.token_file} holds more than one line")
    return token


# --- retries ------------------------------------------------------------------------------------------------------


class _Retry(Exception):
    """One attempt failed in a way worth another; ``wait`` is what the forge asked for, if it did."""

    def __init__(self, error: ForgeError, wait: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


class Ambiguous(ForgeError):
    """A request that creates something failed after it was sent: it may or may not have been done."""


class Conflict(ForgeError):
    """The forge refused an edit made against an out-of-date version (Bitbucket's comment ``version``)."""


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - now, 0.0)


def reset_wait(value: str | None, now: float) -> float | None:
    """Seconds to wait from ``x-ratelimit-reset`` (GitHub) or ``RateLimit-Reset`` (GitLab): Unix time, or
    delay-seconds for the small values of the IETF RateLimit header draft."""
    if value is None:
        return None
    try:
        reset = float(value.strip())
    except ValueError:
        return None
    if reset < 1_000_000_000:
        return max(reset, 0.0)
    return max(reset - now, 0.0) + 1.0  # a second past the reset: the forge's clock counts whole seconds


def rate_limit_wait(response: httpx.Response, now: float) -> tuple[bool, float | None]:
    """Whether ``response`` says "too many requests", and how long the forge asks to wait if it says."""
    headers = response.headers
    after = retry_after(headers.get("retry-after"), now)
    remaining = headers.get("x-ratelimit-remaining", headers.get("ratelimit-remaining"))
    exhausted = remaining is not None and remaining.strip() == "0"
    reset = reset_wait(headers.get("x-ratelimit-reset", headers.get("ratelimit-reset")), now)
    hint = after if after is not None else reset if (exhausted or response.status_code == 429) else None
    status = response.status_code
    # GitHub answers 403 (or 429) to both its primary (x-ratelimit-remaining: 0) and secondary (retry-after) limits.
    limited = status == 429 or (status == 403 and (after is not None or exhausted))
    return limited, hint


def error_text(response: httpx.Response) -> str:
    """The forge's own words from an error answer: GitHub/Gitea/GitLab ``message``/``error``, GitHub's ``errors``,
    Bitbucket's ``errors[].message``; else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        return " ".join(text.split())[:300] if text else response.reason_phrase
    parts: list[str] = []
    if isinstance(data, dict):
        for key in ("message", "error", "error_description"):
            value = data.get(key)
            if isinstance(value, str) and value:
                parts.append(value)
            elif isinstance(value, dict | list) and value:
                parts.append(_compact(value))
        errors = data.get("errors")
        if isinstance(errors, list):
            for item in errors[:5]:
                if isinstance(item, dict):
                    words = item.get("message") or item.get("code")
                    field = item.get("field") or item.get("context")
                    if words:
                        parts.append(f"{field}: {words}" if field else str(words))
                elif isinstance(item, str):
                    parts.append(item)
    if not parts:
        parts.append(_compact(data))
    return "; ".join(parts)[:500]


def _compact(value: Any) -> str:
    return " ".join(str(value).split())[:300]


class HttpForge:
    """The HTTP layer and the comment upsert every client shares; a client adds its forge's paths and JSON."""

    kind = ""
    comment_limit = 0
    description_limit = 0

    def __init__(
        self,
        config: ForgeConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: httpx.Timeout | float = TIMEOUT,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._token = read_token(config)
        self.base_url = config.api_url.rstrip("/")
        if not re.match(r"^https?://[^/]", self.base_url):
            raise ForgeError(f"forge {config.name}: api_url {config.api_url!r} is not an http(s) URL")
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **self.auth_headers(self._token)}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,  # a redirect to another host must not carry the token header
        )

    def auth_headers(self, token: str) -> dict[str, str]:
        raise NotImplementedError

    def set_status(
        self,
        repository: str,
        sha: str,
        state: str,
        context: str,
        description: str,
        target_url: str | None = None,
    ) -> None:
        raise NotImplementedError

    def open_pull_requests(self, repository: str, base_branch: str) -> list[PullRequest]:
        raise NotImplementedError

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpForge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.config.name} {self.base_url}>"

    # --- requests ---

    def _mask(self, text: str) -> str:
        return text.replace(self._token, "***") if len(self._token) >= 4 else text

    def _error(self, method: str, path: str, status: int | None, detail: str) -> ForgeError:
        return ForgeError.http(self.config.name, method, path, status, self._mask(detail))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        repeatable: bool = True,
    ) -> httpx.Response:
        """One call, retried as the module docstring says. ``repeatable=False`` for a request whose repetition
        could do the thing twice: its unknown outcomes raise ``Ambiguous`` instead of retrying."""

        def attempt() -> httpx.Response:
            try:
                response = self._http.request(method, path, params=params, json=json)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:  # nothing was sent
                raise _Retry(self._error(method, path, None, f"cannot connect: {type(err).__name__}: {err}")) from None
            except httpx.TransportError as err:  # sent, perhaps done: timeouts, broken connections
                error = self._error(method, path, None, f"{type(err).__name__}: {err or 'no detail'}")
                if repeatable:
                    raise _Retry(error) from None
                raise Ambiguous.http(error.forge, method, path, None, error.detail) from None
            except httpx.HTTPError as err:  # an answer httpx could not decode
                raise self._error(method, path, None, f"{type(err).__name__}: {err or 'no detail'}") from None
            status = response.status_code
            if status < 300:
                return response
            if 300 <= status < 400:
                where = response.headers.get("location", "elsewhere")
                raise self._error(method, path, status, f"redirected to {where}; configure the URL it names")
            error = self._error(method, path, status, error_text(response))
            limited, hint = rate_limit_wait(response, time.time())
            if limited:  # refused before any work: safe to repeat
                raise _Retry(error, hint)
            if status >= 500:
                if repeatable:
                    raise _Retry(error, retry_after(response.headers.get("retry-after"), time.time()))
                raise Ambiguous.http(error.forge, method, path, status, error.detail)
            if status == 409:
                raise Conflict.http(error.forge, method, path, status, error.detail)
            raise error

        retrying = Retrying(
            sleep=self._sleep,
            retry=retry_if_exception_type(_Retry),
            wait=_wait,
            stop=_stop,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retry as last:
            state = retrying.statistics
            attempts = state.get("attempt_number", 1)
            if last.wait is not None and last.wait + state.get("idle_for", 0.0) > WAIT_BUDGET:
                raise last.error.adding(
                    f"the forge asks to wait {last.wait:.0f} s, past the {WAIT_BUDGET:.0f} s this call may wait"
                ) from None
            raise last.error.adding(f"gave up after {attempts} attempts") from None

    def json(self, response: httpx.Response, method: str, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self._error(method, path, response.status_code, "the answer is not JSON") from None

    def get_pages(
        self,
        path: str,
        params: Mapping[str, str | int],
        advance: Callable[[httpx.Response, Any, dict[str, str | int]], dict[str, str | int] | None],
    ) -> Iterator[Any]:
        """The JSON of each page of a listing; ``advance`` gives the next page's parameters or ``None``."""
        query: dict[str, str | int] | None = dict(params)
        for _ in range(MAX_PAGES):
            if query is None:
                return
            response = self.request("GET", path, params=query)
            data = self.json(response, "GET", path)
            yield data
            query = advance(response, data, query)
        if query is not None:
            raise self._error("GET", path, None, f"more than {MAX_PAGES} pages; giving up rather than miss one")

    def link_pages(self, path: str, params: Mapping[str, str | int]) -> Iterator[Any]:
        """Pages numbered by ``page``, followed while the ``Link`` header has ``rel="next"`` (GitHub, Gitea)."""

        def advance(response: httpx.Response, data: Any, query: dict[str, str | int]) -> dict[str, str | int] | None:
            if "next" not in response.links:
                return None
            return {**query, "page": int(query.get("page", 1)) + 1}

        return self.get_pages(path, params, advance)

    # --- comments ---

    def upsert_comment(self, repository: str, number: int, marker: str, body: str) -> None:
        """Edit the pull request's comment holding ``marker`` to ``body``, or create it: never a second one."""
        if not marker.strip():
            raise ValueError("the marker must not be empty")
        if number <= 0:
            raise ValueError(f"{number} is not a pull request number")
        text = body if marker in body else f"{marker}\n{body}"
        text = cut_comment(text, self.comment_limit, marker)
        last: ForgeError | None = None
        for round_ in range(CREATE_ROUNDS):
            if round_:
                self._sleep(min(BACKOFF_FIRST * 2**round_, BACKOFF_MAX))
            found = self.find_comment(repository, number, marker, leading=text.startswith(marker))
            try:
                if found is None:
                    self.create_comment(repository, number, text)
                elif _normal(found.body) != _normal(text):
                    self.edit_comment(repository, number, found, text)
                return
            except (Ambiguous, Conflict) as err:  # look again before writing again
                last = err
        assert last is not None
        raise last.adding(f"gave up after {CREATE_ROUNDS} rounds of reading and writing the comment")

    def find_comment(self, repository: str, number: int, marker: str, *, leading: bool = True) -> Comment | None:
        """The first comment that starts with ``marker``; unless ``leading``, the first that holds it anywhere.

        Ours start with the marker whenever the body given starts with it (or lacks it): someone else's comment
        that merely quotes the marker is then never taken for ours."""
        for comment in self.list_comments(repository, number):
            if comment.body.startswith(marker) or (not leading and marker in comment.body):
                return comment
        return None

    def list_comments(self, repository: str, number: int) -> Iterator[Comment]:
        raise NotImplementedError

    def create_comment(self, repository: str, number: int, body: str) -> None:
        raise NotImplementedError

    def edit_comment(self, repository: str, number: int, comment: Comment, body: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Comment:
    id: int
    body: str
    version: int = 0


def _normal(text: str) -> str:
    """A comment body as forges may give it back: CRLF line ends, trailing blanks dropped."""
    return text.replace("\r\n", "\n").rstrip()


def _wait(state: RetryCallState) -> float:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    if isinstance(error, _Retry) and error.wait is not None:
        return error.wait
    backoff = min(BACKOFF_FIRST * 2.0 ** (state.attempt_number - 1), BACKOFF_MAX)
    return backoff + random.uniform(0, backoff / 4)  # jitter, so many controllers do not retry in step


def _stop(state: RetryCallState) -> bool:
    return state.attempt_number >= MAX_ATTEMPTS or state.idle_for + state.upcoming_sleep > WAIT_BUDGET


def items(page: Any) -> Iterator[dict[str, Any]]:
    """The objects of a page that is a JSON list (the listings of GitHub, Gitea and GitLab)."""
    if isinstance(page, list):
        yield from (item for item in page if isinstance(item, dict))
