"""Fake forge APIs on loopback: GitHub, GitLab, Gitea and Bitbucket Server, one small HTTP server each.

Each checks every request as its forge documents it — method, path, the token header, the JSON fields, their
allowed values and their length limits — and answers a violation with that forge's own error status and body. It
keeps state (statuses per commit, comments per pull request with ids and versions, pull requests), records every
request, and can be told to fail the next requests (``fail_next``: 5xx, 429 with ``Retry-After``, rate-limit
headers, a delay, or an answer sent after the work was done).

    with FakeGitHub() as forge:                     # a random free port on 127.0.0.1; stopped on exit
        forge.add_pull_request(7, "ab" * 20)        # open, to main, from the same repository
        client = open_forge(ForgeConfig("gh", "github", forge.url, token_file))   # token file holds forge.token
        client.upsert_comment(forge.clone_url, 7, "<!-- m -->", "hello")
        forge.comments(7), forge.statuses("ab" * 20), forge.requests

One repository per fake: ``repository`` (``org/infra``, ``group/sub/infra``, ``PROJ/infra``); ``clone_url`` is a
URL of it as a deployment would configure it. ``page_size`` caps every page, so small values force pagination.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

MAX_BODY = 16 * 1024 * 1024
BOT = "nixgitops-bot"
"""The user the token belongs to: the author of what the client creates."""
_INVALID = object()
_HEX = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")


def utf16_units(text: str) -> int:
    """What Java's ``String.length()`` counts (Bitbucket)."""
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    """The raw path as sent, percent-encoding kept, without the query."""
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-case names."""
    body: Any
    """The parsed JSON body, ``None`` when empty."""
    status: int


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    status: int | None
    headers: dict[str, str]
    body: Any
    method: str | None
    path: str | None
    after: bool
    delay: float


@dataclass
class FakePull:
    number: int
    head_sha: str
    base_branch: str
    head_branch: str
    from_fork: bool
    title: str
    state: str = "open"


@dataclass
class FakeComment:
    id: int
    body: str
    author: str
    version: int = 0
    system: bool = False


@dataclass
class FakeStatus:
    state: str
    """In the forge's own words."""
    context: str
    description: str | None
    target_url: str | None
    raw: dict[str, Any]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeForge


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall per answer
    wbufsize = 1 << 16  # headers and body in one write; handle_one_request flushes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        try:
            self.server.fake._serve(self)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any


class FakeForge:
    kind = ""
    default_prefix = ""
    default_repository = ""
    max_page = 100

    def __init__(self, *, token: str = "fake-token", repository: str = "", prefix: str | None = None) -> None:
        self.token = token
        self.repository = repository or self.default_repository
        self.prefix = self.default_prefix if prefix is None else prefix
        self.page_size = self.max_page
        self.requests: list[Recorded] = []
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._statuses: dict[str, list[FakeStatus]] = {}
        self._comments: dict[int, list[FakeComment]] = {}
        self._pulls: dict[int, FakePull] = {}
        self._ids = itertools.count(1001)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # --- lifecycle ---

    def start(self, port: int = 0) -> FakeForge:
        server = _Server(("127.0.0.1", port), _Handler)
        server.fake = self
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeForge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._port, "start() the fake first"
        return self._port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The ``api_url`` to configure."""
        return self.origin + self.prefix

    @property
    def clone_url(self) -> str:
        raise NotImplementedError

    # --- the test's side ---

    def fail_next(
        self,
        count: int = 1,
        status: int | None = 500,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        method: str | None = None,
        path: str | None = None,
        after: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``count`` requests (those with ``method`` and a path matching the regex ``path``, if
        given) with ``status``, ``headers`` and ``body`` (a forge-like error body by default). ``after``: do the
        work first, then answer so. ``delay``: wait that long first; with ``status=None``, then answer normally."""
        fault = Fault(status, dict(headers or {}), body, method, path, after, delay)
        with self._lock:
            self._faults.extend([fault] * count)

    def add_pull_request(
        self,
        number: int,
        head_sha: str,
        *,
        base_branch: str = "main",
        head_branch: str | None = None,
        from_fork: bool = False,
        title: str = "",
        state: str = "open",
    ) -> FakePull:
        pull = FakePull(number, head_sha, base_branch, head_branch or f"topic-{number}", from_fork, title, state)
        with self._lock:
            self._pulls[number] = pull
            self._comments.setdefault(number, [])
        return pull

    def add_comment(self, number: int, body: str, *, author: str = "someone", system: bool = False) -> int:
        with self._lock:
            comment = FakeComment(next(self._ids), body, author, system=system)
            self._comments.setdefault(number, []).append(comment)
            return comment.id

    def comments(self, number: int) -> list[FakeComment]:
        with self._lock:
            return [FakeComment(c.id, c.body, c.author, c.version, c.system) for c in self._comments.get(number, [])]

    def statuses(self, sha: str) -> list[FakeStatus]:
        with self._lock:
            return list(self._statuses.get(sha.lower(), []))

    def requests_matching(self, method: str, pattern: str) -> list[Recorded]:
        return [r for r in list(self.requests) if r.method == method and re.search(pattern, r.path)]

    # --- serving ---

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for i, fault in enumerate(self._faults):
            if fault.method not in (None, method):
                continue
            if fault.path is not None and not re.search(fault.path, path):
                continue
            return self._faults.pop(i)
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        headers = {k.lower(): v for k, v in handler.headers.items()}
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            self._send(handler, Reply(413, {"message": "request body too large"}), close=True)
            return
        raw = handler.rfile.read(length) if length else b""
        split = urlsplit(handler.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        body: Any = None
        if raw:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                body = _INVALID
        with self._lock:
            fault = self._take_fault(method, path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        with self._lock:
            if fault is not None and fault.status is not None and not fault.after:
                reply = self._fault_reply(fault)
            else:
                reply = self._handle(method, path, query, headers, body)
                if fault is not None and fault.status is not None:
                    reply = self._fault_reply(fault)
            recorded_body = None if body is _INVALID else body
            self.requests.append(Recorded(method, path, query, headers, recorded_body, reply.status))
        self._send(handler, reply)

    def _fault_reply(self, fault: Fault) -> Reply:
        assert fault.status is not None
        reply = self.error(fault.status, fault.body if isinstance(fault.body, str) else "injected failure")
        if fault.body is not None and not isinstance(fault.body, str):
            reply.body = fault.body
        reply.headers.update(fault.headers)
        return reply

    def _handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any) -> Reply:
        if not path.startswith(self.prefix + "/"):
            return self.error(404, "Not Found")
        refused = self.check_auth(headers)
        if refused is not None:
            return refused
        if method in ("POST", "PUT", "PATCH") and body is _INVALID:
            return self.error(400, "Problems parsing JSON")
        rel = path[len(self.prefix) :]
        for verb, pattern, action in self.routes():
            match = re.fullmatch(pattern, rel)
            if match is not None and verb == method:
                return action(match, query, body if isinstance(body, dict) else ({} if body is None else body))
        if any(re.fullmatch(p, rel) for _, p, _ in self.routes()):
            return self.error(405, "Method Not Allowed")
        return self.error(404, "Not Found")

    def _send(self, handler: BaseHTTPRequestHandler, reply: Reply, *, close: bool = False) -> None:
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        handler.send_response(reply.status)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        if payload:
            handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(payload)))
        if close:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        if payload and handler.command != "HEAD":
            handler.wfile.write(payload)

    # --- what each forge defines ---

    def routes(self) -> list[tuple[str, str, Callable[[re.Match[str], dict[str, str], Any], Reply]]]:
        raise NotImplementedError

    def check_auth(self, headers: dict[str, str]) -> Reply | None:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Reply:
        raise NotImplementedError

    # --- shared helpers ---

    def _page_numbers(self, query: dict[str, str], size_key: str, default: int) -> tuple[int, int] | Reply:
        try:
            page = int(query.get("page", "1"))
            size = int(query.get(size_key, str(default)))
        except ValueError:
            return self.error(400, f"page and {size_key} must be integers")
        if page < 1 or size < 1:
            return self.error(400, f"page and {size_key} must be positive")
        return page, min(size, self.max_page, self.page_size)

    def _link(self, path: str, query: dict[str, str], page: int, pages: int) -> dict[str, str]:
        links = []
        if page < pages:
            links.append(f'<{self.origin}{path}?{urlencode({**query, "page": page + 1})}>; rel="next"')
            links.append(f'<{self.origin}{path}?{urlencode({**query, "page": pages})}>; rel="last"')
        if page > 1:
            links.append(f'<{self.origin}{path}?{urlencode({**query, "page": 1})}>; rel="first"')
            links.append(f'<{self.origin}{path}?{urlencode({**query, "page": page - 1})}>; rel="prev"')
        return {"Link": ", ".join(links)} if links else {}

    def _new_comment(self, number: int, body: str) -> FakeComment:
        comment = FakeComment(next(self._ids), body, BOT)
        self._comments.setdefault(number, []).append(comment)
        return comment

    def _find_comment(self, comment_id: int) -> tuple[int, FakeComment] | None:
        for number, comments in self._comments.items():
            for comment in comments:
                if comment.id == comment_id:
                    return number, comment
        return None


def _page(items: list[Any], page: int, size: int) -> tuple[list[Any], int]:
    pages = max(1, -(-len(items) // size))
    return items[(page - 1) * size : page * size], pages


# --- GitHub ---------------------------------------------------------------------------------------------------------


class FakeGitHub(FakeForge):
    """GitHub REST v3 under ``/api/v3`` (as GitHub Enterprise Server serves it)."""

    kind = "github"
    default_prefix = "/api/v3"
    default_repository = "org/infra"
    DOCS = "https://docs.github.com/rest"
    STATES = ("error", "failure", "pending", "success")

    @property
    def clone_url(self) -> str:
        return f"https://github.example.com/{self.repository}.git"

    def check_auth(self, headers: dict[str, str]) -> Reply | None:
        if not headers.get("user-agent"):
            return self.error(
                403, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header"
            )
        if headers.get("authorization") not in (f"Bearer {self.token}", f"token {self.token}"):
            return self.error(401, "Bad credentials")
        return None

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, {"message": message, "documentation_url": self.DOCS, "status": str(status)})

    def invalid(self, resource: str, field: str, message: str) -> Reply:
        error = {"resource": resource, "code": "custom", "field": field, "message": message}
        return Reply(422, {"message": "Validation Failed", "errors": [error], "documentation_url": self.DOCS})

    def routes(self) -> list[tuple[str, str, Callable[[re.Match[str], dict[str, str], Any], Reply]]]:
        repo = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
        return [
            ("POST", repo + r"/statuses/(?P<sha>[^/]+)", self.create_status),
            ("GET", repo + r"/issues/(?P<n>\d+)/comments", self.list_comments),
            ("POST", repo + r"/issues/(?P<n>\d+)/comments", self.create_comment),
            ("PATCH", repo + r"/issues/comments/(?P<id>\d+)", self.edit_comment),
            ("GET", repo + r"/pulls", self.list_pulls),
            ("GET", repo + r"/commits/(?P<sha>[^/]+)/statuses", self.list_statuses),
        ]

    def _repo_ok(self, match: re.Match[str]) -> bool:
        return f"{match['owner']}/{match['repo']}".lower() == self.repository.lower()

    def list_statuses(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        """GitHub's "List commit statuses for a reference": newest first (the demo shows them)."""
        if not self._repo_ok(match):
            return self.error(404, "Not Found")
        found = list(reversed(self._statuses.get(match["sha"].lower(), [])))
        return Reply(200, [{"state": s.state, "context": s.context, "description": s.description} for s in found])

    def create_status(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        if not self._repo_ok(match):
            return self.error(404, "Not Found")
        if not _HEX.fullmatch(match["sha"]):
            return self.error(422, f"No commit found for SHA: {match['sha']}")
        if not isinstance(body, dict):
            return self.error(400, "Problems parsing JSON")
        state, description = body.get("state"), body.get("description")
        context, target = body.get("context", "default"), body.get("target_url")
        if state not in self.STATES:
            return self.invalid("Status", "state", "state is not included in the list")
        if description is not None and not isinstance(description, str):
            return self.invalid("Status", "description", "description must be a string")
        if isinstance(description, str) and len(description) > 140:
            return self.invalid("Status", "description", "description is too long (maximum is 140 characters)")
        if not isinstance(context, str) or (target is not None and not isinstance(target, str)):
            return self.invalid("Status", "context", "context and target_url must be strings")
        status = FakeStatus(state, context, description, target, dict(body))
        self._statuses.setdefault(match["sha"].lower(), []).append(status)
        return Reply(
            201,
            {
                "id": next(self._ids),
                "state": state,
                "context": context,
                "description": description,
                "target_url": target,
            },
        )

    def _comment_json(self, comment: FakeComment) -> dict[str, Any]:
        return {
            "id": comment.id,
            "body": comment.body,
            "user": {"login": comment.author},
            "html_url": f"https://github.example.com/{self.repository}/pull/0#issuecomment-{comment.id}",
        }

    def list_comments(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        number = int(match["n"])
        if not self._repo_ok(match) or number not in self._comments:
            return self.error(404, "Not Found")
        paging = self._page_numbers(query, "per_page", 30)
        if isinstance(paging, Reply):
            return paging
        page, size = paging
        items, pages = _page(self._comments[number], page, size)
        path = f"{self.prefix}/repos/{match['owner']}/{match['repo']}/issues/{number}/comments"
        return Reply(200, [self._comment_json(c) for c in items], self._link(path, query, page, pages))

    def _body(self, body: Any) -> str | Reply:
        text = body.get("body") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            return self.invalid("IssueComment", "body", "body wasn't supplied")
        if len(text) > 65536:
            return self.invalid("IssueComment", "body", "Body is too long (maximum is 65536 characters)")
        return text

    def create_comment(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        number = int(match["n"])
        if not self._repo_ok(match) or number not in self._comments:
            return self.error(404, "Not Found")
        text = self._body(body)
        if isinstance(text, Reply):
            return text
        return Reply(201, self._comment_json(self._new_comment(number, text)))

    def edit_comment(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        found = self._find_comment(int(match["id"])) if self._repo_ok(match) else None
        if found is None:
            return self.error(404, "Not Found")
        text = self._body(body)
        if isinstance(text, Reply):
            return text
        found[1].body = text
        found[1].version += 1
        return Reply(200, self._comment_json(found[1]))

    def list_pulls(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        if not self._repo_ok(match):
            return self.error(404, "Not Found")
        state = query.get("state", "open")
        if state not in ("open", "closed", "all"):
            return self.invalid("PullRequest", "state", "state is not included in the list")
        paging = self._page_numbers(query, "per_page", 30)
        if isinstance(paging, Reply):
            return paging
        page, size = paging
        pulls = sorted(self._pulls.values(), key=lambda p: p.number, reverse=query.get("direction") != "asc")
        pulls = [p for p in pulls if state == "all" or p.state == state]
        if "base" in query:
            pulls = [p for p in pulls if p.base_branch == query["base"]]
        items, pages = _page(pulls, page, size)
        base_repo = {"id": 1, "full_name": self.repository}
        fork = {"id": 2, "full_name": "someone/" + self.repository.split("/")[-1]}
        data = [
            {
                "number": p.number,
                "state": p.state,
                "title": p.title,
                "html_url": f"https://github.example.com/{self.repository}/pull/{p.number}",
                "head": {"ref": p.head_branch, "sha": p.head_sha, "repo": fork if p.from_fork else base_repo},
                "base": {"ref": p.base_branch, "sha": "0" * 40, "repo": base_repo},
            }
            for p in items
        ]
        path = f"{self.prefix}/repos/{match['owner']}/{match['repo']}/pulls"
        return Reply(200, data, self._link(path, query, page, pages))


# --- GitLab ---------------------------------------------------------------------------------------------------------


class FakeGitLab(FakeForge):
    """GitLab REST v4 under ``/api/v4``; the project is found by its id or its URL-encoded path."""

    kind = "gitlab"
    default_prefix = "/api/v4"
    default_repository = "group/sub/infra"
    project_id = 42
    STATES = ("pending", "running", "success", "failed", "canceled", "skipped")

    @property
    def clone_url(self) -> str:
        return f"git@gitlab.example.com:{self.repository}.git"

    def check_auth(self, headers: dict[str, str]) -> Reply | None:
        if headers.get("private-token") == self.token or headers.get("authorization") == f"Bearer {self.token}":
            return None
        return self.error(401, "401 Unauthorized")

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, {"message": message})

    def routes(self) -> list[tuple[str, str, Callable[[re.Match[str], dict[str, str], Any], Reply]]]:
        project = r"/projects/(?P<id>[^/]+)"
        mr = project + r"/merge_requests/(?P<iid>\d+)"
        return [
            ("POST", project + r"/statuses/(?P<sha>[^/]+)", self.create_status),
            ("GET", mr + r"/notes", self.list_notes),
            ("POST", mr + r"/notes", self.create_note),
            ("PUT", mr + r"/notes/(?P<note>\d+)", self.edit_note),
            ("GET", project + r"/merge_requests", self.list_merge_requests),
        ]

    def _project_ok(self, match: re.Match[str]) -> bool:
        given = match["id"]
        encoded = self.repository.replace("/", "%2F")
        return given == str(self.project_id) or given.lower() == encoded.lower()

    def create_status(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        if not self._project_ok(match):
            return self.error(404, "404 Project Not Found")
        if not _HEX.fullmatch(match["sha"]):
            return self.error(404, "404 Commit Not Found")
        params = {**query, **(body if isinstance(body, dict) else {})}
        state = params.get("state")
        if state is None:
            return Reply(400, {"error": "state is missing"})
        if state not in self.STATES:
            return Reply(400, {"error": "state does not have a valid value"})
        for key in ("description", "target_url", "name", "context"):
            if params.get(key) is not None and not isinstance(params.get(key), str):
                return Reply(400, {"error": f"{key} is invalid"})
        for key in ("description", "target_url"):
            if len(params.get(key) or "") > 255:
                return Reply(400, {"message": {key: ["is too long (maximum is 255 characters)"]}})
        name = params.get("name") or params.get("context") or "default"
        sha = match["sha"].lower()
        current = next((s for s in reversed(self._statuses.get(sha, [])) if s.context == name), None)
        if current is not None and current.state in ("pending", "running") and current.state == state:
            event = "enqueue" if state == "pending" else "run"
            reason = f'Status cannot transition via "{event}"'
            return self.error(400, f"Cannot transition status via :{event} from :{state} (Reason(s): {reason})")
        status = FakeStatus(state, name, params.get("description"), params.get("target_url"), dict(params))
        self._statuses.setdefault(sha, []).append(status)
        return Reply(
            201,
            {
                "id": next(self._ids),
                "sha": sha,
                "status": state,
                "name": name,
                "description": status.description,
                "target_url": status.target_url,
            },
        )

    def _mr_ok(self, match: re.Match[str]) -> bool:
        return self._project_ok(match) and int(match["iid"]) in self._pulls

    def _note_json(self, comment: FakeComment) -> dict[str, Any]:
        return {
            "id": comment.id,
            "body": comment.body,
            "author": {"username": comment.author},
            "system": comment.system,
            "noteable_type": "MergeRequest",
        }

    def _pagination(self, path: str, query: dict[str, str], items: list[Any], page: int, size: int) -> Reply:
        chunk, pages = _page(items, page, size)
        headers = {
            "X-Page": str(page),
            "X-Per-Page": str(size),
            "X-Next-Page": str(page + 1) if page < pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
            "X-Total": str(len(items)),
            "X-Total-Pages": str(pages),
            **self._link(path, query, page, pages),
        }
        return Reply(200, chunk, headers)

    def list_notes(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        if not self._mr_ok(match):
            return self.error(404, "404 Not found")
        paging = self._page_numbers(query, "per_page", 20)
        if isinstance(paging, Reply):
            return paging
        notes = list(self._comments[int(match["iid"])])
        if query.get("sort", "desc") == "desc":
            notes.reverse()
        path = f"{self.prefix}/projects/{match['id']}/merge_requests/{match['iid']}/notes"
        reply = self._pagination(path, query, notes, *paging)
        reply.body = [self._note_json(n) for n in reply.body]
        return reply

    def _note_body(self, body: Any) -> str | Reply:
        text = body.get("body") if isinstance(body, dict) else None
        if text is None:
            return Reply(400, {"error": "body is missing"})
        if not isinstance(text, str) or not text.strip():
            return Reply(400, {"message": {"note": ["can't be blank"]}})
        if len(text) > 1_000_000:
            return Reply(400, {"message": {"note": ["is too long (maximum is 1000000 characters)"]}})
        return text

    def create_note(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        if not self._mr_ok(match):
            return self.error(404, "404 Not found")
        text = self._note_body(body)
        if isinstance(text, Reply):
            return text
        return Reply(201, self._note_json(self._new_comment(int(match["iid"]), text)))

    def edit_note(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        found = self._find_comment(int(match["note"])) if self._mr_ok(match) else None
        if found is None or found[0] != int(match["iid"]):
            return self.error(404, "404 Note Not Found")
        if found[1].system:
            return self.error(403, "403 Forbidden")
        text = self._note_body(body)
        if isinstance(text, Reply):
            return text
        found[1].body = text
        found[1].version += 1
        return Reply(200, self._note_json(found[1]))

    def list_merge_requests(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        if not self._project_ok(match):
            return self.error(404, "404 Project Not Found")
        state = query.get("state", "all")
        if state not in ("opened", "closed", "locked", "merged", "all"):
            return Reply(400, {"error": "state does not have a valid value"})
        paging = self._page_numbers(query, "per_page", 20)
        if isinstance(paging, Reply):
            return paging
        wanted = {"open": "opened"}
        pulls = sorted(self._pulls.values(), key=lambda p: p.number, reverse=query.get("sort", "desc") == "desc")
        pulls = [p for p in pulls if state == "all" or wanted.get(p.state, p.state) == state]
        if "target_branch" in query:
            pulls = [p for p in pulls if p.base_branch == query["target_branch"]]
        path = f"{self.prefix}/projects/{match['id']}/merge_requests"
        reply = self._pagination(path, query, pulls, *paging)
        reply.body = [
            {
                "id": 5000 + p.number,
                "iid": p.number,
                "project_id": self.project_id,
                "title": p.title,
                "state": wanted.get(p.state, p.state),
                "target_branch": p.base_branch,
                "source_branch": p.head_branch,
                "sha": p.head_sha,
                "source_project_id": 77 if p.from_fork else self.project_id,
                "target_project_id": self.project_id,
                "web_url": f"https://gitlab.example.com/{self.repository}/-/merge_requests/{p.number}",
            }
            for p in reply.body
        ]
        return reply


# --- Gitea ----------------------------------------------------------------------------------------------------------


class FakeGitea(FakeForge):
    """Gitea REST v1 under ``/api/v1``. Like Gitea, it answers an issue's comments all at once (no pages)."""

    kind = "gitea"
    default_prefix = "/api/v1"
    default_repository = "org/infra"
    max_page = 50
    STATES = ("pending", "success", "error", "failure", "warning")

    @property
    def clone_url(self) -> str:
        return f"https://gitea.example.com/{self.repository}.git"

    def check_auth(self, headers: dict[str, str]) -> Reply | None:
        if headers.get("authorization") in (f"token {self.token}", f"Bearer {self.token}"):
            return None
        return self.error(401, "token is required")

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, {"message": message, "url": "https://gitea.example.com/api/swagger"})

    def routes(self) -> list[tuple[str, str, Callable[[re.Match[str], dict[str, str], Any], Reply]]]:
        repo = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
        return [
            ("POST", repo + r"/statuses/(?P<sha>[^/]+)", self.create_status),
            ("GET", repo + r"/issues/(?P<n>\d+)/comments", self.list_comments),
            ("POST", repo + r"/issues/(?P<n>\d+)/comments", self.create_comment),
            ("PATCH", repo + r"/issues/comments/(?P<id>\d+)", self.edit_comment),
            ("GET", repo + r"/pulls", self.list_pulls),
        ]

    def _repo_ok(self, match: re.Match[str]) -> bool:
        return f"{match['owner']}/{match['repo']}".lower() == self.repository.lower()

    def create_status(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        if not self._repo_ok(match):
            return self.error(404, "The target couldn't be found.")
        if not _HEX.fullmatch(match["sha"]):
            return self.error(422, f"invalid sha: {match['sha']}")
        if not isinstance(body, dict) or body.get("state") not in self.STATES:
            return self.error(422, "[State]: invalid commit status state")
        for key in ("description", "context", "target_url"):
            if body.get(key) is not None and not isinstance(body.get(key), str):
                return self.error(422, f"[{key}]: must be a string")
        status = FakeStatus(
            body["state"],
            (body.get("context") or "").strip(),
            body.get("description"),
            body.get("target_url"),
            dict(body),
        )
        self._statuses.setdefault(match["sha"].lower(), []).append(status)
        return Reply(
            201,
            {
                "id": next(self._ids),
                "status": status.state,
                "context": status.context,
                "description": status.description,
                "target_url": status.target_url,
            },
        )

    def _comment_json(self, comment: FakeComment) -> dict[str, Any]:
        return {"id": comment.id, "body": comment.body, "user": {"login": comment.author}}

    def list_comments(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        number = int(match["n"])
        if not self._repo_ok(match) or number not in self._comments:
            return self.error(404, "The target couldn't be found.")
        comments = self._comments[number]
        return Reply(200, [self._comment_json(c) for c in comments], {"X-Total-Count": str(len(comments))})

    def _body(self, body: Any) -> str | Reply:
        text = body.get("body") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            return self.error(422, "[Body]: Required")
        return text

    def create_comment(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        number = int(match["n"])
        if not self._repo_ok(match) or number not in self._comments:
            return self.error(404, "The target couldn't be found.")
        text = self._body(body)
        if isinstance(text, Reply):
            return text
        return Reply(201, self._comment_json(self._new_comment(number, text)))

    def edit_comment(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        found = self._find_comment(int(match["id"])) if self._repo_ok(match) else None
        if found is None:
            return self.error(404, "The target couldn't be found.")
        if found[1].author != BOT:
            return Reply(403, None)
        text = self._body(body)
        if isinstance(text, Reply):
            return text
        found[1].body = text
        found[1].version += 1
        return Reply(200, self._comment_json(found[1]))

    def list_pulls(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        if not self._repo_ok(match):
            return self.error(404, "The target couldn't be found.")
        state = query.get("state", "open")
        if state not in ("open", "closed", "all"):
            return self.error(422, "invalid state")
        paging = self._page_numbers(query, "limit", self.max_page)
        if isinstance(paging, Reply):
            return paging
        page, size = paging
        pulls = sorted(self._pulls.values(), key=lambda p: p.number, reverse=query.get("sort") != "oldest")
        pulls = [p for p in pulls if state == "all" or p.state == state]
        items, pages = _page(pulls, page, size)
        base = {"id": 1, "full_name": self.repository}
        fork = {"id": 2, "full_name": "someone/" + self.repository.split("/")[-1]}
        data = [
            {
                "number": p.number,
                "state": p.state,
                "title": p.title,
                "html_url": f"https://gitea.example.com/{self.repository}/pulls/{p.number}",
                "head": {
                    "ref": p.head_branch,
                    "sha": p.head_sha,
                    "repo_id": 2 if p.from_fork else 1,
                    "repo": fork if p.from_fork else base,
                },
                "base": {"ref": p.base_branch, "sha": "0" * 40, "repo_id": 1, "repo": base},
            }
            for p in items
        ]
        path = f"{self.prefix}/repos/{match['owner']}/{match['repo']}/pulls"
        headers = {"X-Total-Count": str(len(pulls)), **self._link(path, query, page, pages)}
        return Reply(200, data, headers)


# --- Bitbucket Server -------------------------------------------------------------------------------------------------


class FakeBitbucketServer(FakeForge):
    """Bitbucket Server / Data Center: REST 1.0 and build-status 1.0 at the server's root."""

    kind = "bitbucket_server"
    default_prefix = ""
    default_repository = "PROJ/infra"
    max_page = 1000
    STATES = ("INPROGRESS", "SUCCESSFUL", "FAILED")

    @property
    def clone_url(self) -> str:
        return f"https://bitbucket.example.com/scm/{self.repository.lower()}.git"

    def check_auth(self, headers: dict[str, str]) -> Reply | None:
        if headers.get("authorization") == f"Bearer {self.token}":
            return None
        return self.failure(
            401,
            "Authentication failed. Please check your credentials and try again.",
            exception="com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException",
        )

    def error(self, status: int, message: str) -> Reply:
        return self.failure(status, message)

    def failure(self, status: int, message: str, *, context: str | None = None, exception: str | None = None) -> Reply:
        return Reply(status, {"errors": [{"context": context, "message": message, "exceptionName": exception}]})

    def _handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any) -> Reply:
        content_type = headers.get("content-type", "")
        if method in ("POST", "PUT") and not content_type.startswith("application/json"):
            return self.failure(415, "Unsupported Media Type")
        return super()._handle(method, path, query, headers, body)

    def routes(self) -> list[tuple[str, str, Callable[[re.Match[str], dict[str, str], Any], Reply]]]:
        repo = r"/rest/api/1\.0/projects/(?P<project>[^/]+)/repos/(?P<slug>[^/]+)"
        pr = repo + r"/pull-requests/(?P<id>\d+)"
        return [
            ("POST", r"/rest/build-status/1\.0/commits/(?P<sha>[^/]+)", self.create_build_status),
            ("GET", pr + r"/activities", self.list_activities),
            ("POST", pr + r"/comments", self.create_comment),
            ("GET", pr + r"/comments/(?P<cid>\d+)", self.get_comment),
            ("PUT", pr + r"/comments/(?P<cid>\d+)", self.edit_comment),
            ("GET", repo + r"/pull-requests", self.list_pulls),
        ]

    def _repo_problem(self, match: re.Match[str]) -> Reply | None:
        project, slug = self.repository.split("/")
        if match["project"] != project and match["project"].upper() != project:
            return self.failure(
                404,
                f"Project {match['project']} does not exist.",
                exception="com.atlassian.bitbucket.project.NoSuchProjectException",
            )
        if match["slug"] != slug:
            return self.failure(
                404,
                f"Repository {project}/{match['slug']} does not exist.",
                exception="com.atlassian.bitbucket.repository.NoSuchRepositoryException",
            )
        return None

    def create_build_status(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        if not _HEX.fullmatch(match["sha"]):
            return self.failure(400, f"{match['sha']} is not a valid commit id", context="commitId")
        if not isinstance(body, dict):
            return self.failure(400, "A JSON object is required")
        state = body.get("state")
        if state not in self.STATES:
            return self.failure(400, f"{state} is not a valid build state", context="state")
        limits = {"key": 255, "name": 255, "url": 450, "description": 255}
        for key in ("key", "url"):
            if not isinstance(body.get(key), str) or not body[key]:
                return self.failure(400, f"{key} is required", context=key)
        for key, limit in limits.items():
            value = body.get(key)
            if value is not None and (not isinstance(value, str) or utf16_units(value) > limit):
                return self.failure(400, f"{key} must be a string of at most {limit} characters", context=key)
        status = FakeStatus(state, body["key"], body.get("description"), body["url"], dict(body))
        statuses = self._statuses.setdefault(match["sha"].lower(), [])
        statuses.append(status)  # Bitbucket keeps the latest per key; every post stays here for the tests
        return Reply(204)

    def _paged(self, query: dict[str, str], items: list[Any]) -> Reply:
        try:
            start = int(query.get("start", "0"))
            limit = int(query.get("limit", "25"))
        except ValueError:
            return self.failure(400, "start and limit must be integers")
        limit = max(1, min(limit, self.max_page, self.page_size))
        chunk = items[start : start + limit]
        last = start + limit >= len(items)
        page: dict[str, Any] = {"size": len(chunk), "limit": limit, "isLastPage": last, "values": chunk, "start": start}
        if not last:
            page["nextPageStart"] = start + limit
        return Reply(200, page)

    def _comment_json(self, comment: FakeComment) -> dict[str, Any]:
        return {
            "id": comment.id,
            "version": comment.version,
            "text": comment.body,
            "author": {"name": comment.author, "slug": comment.author},
        }

    def _pr_problem(self, match: re.Match[str]) -> Reply | None:
        problem = self._repo_problem(match)
        if problem is None and int(match["id"]) not in self._pulls:
            problem = self.failure(
                404,
                f"Pull request {match['id']} does not exist in {self.repository}.",
                exception="com.atlassian.bitbucket.pull.NoSuchPullRequestException",
            )
        return problem

    def list_activities(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        problem = self._pr_problem(match)
        if problem is not None:
            return problem
        number = int(match["id"])
        activities: list[dict[str, Any]] = [{"id": 1, "action": "OPENED", "user": {"name": "someone"}}]
        for comment in self._comments[number]:
            activities.append(
                {
                    "id": comment.id * 10,
                    "action": "COMMENTED",
                    "commentAction": "ADDED",
                    "comment": self._comment_json(comment),
                }
            )
            activities.append({"id": comment.id * 10 + 1, "action": "APPROVED", "user": {"name": "someone"}})
        activities.reverse()  # newest first, as Bitbucket lists them
        return self._paged(query, activities)

    def _text(self, body: Any) -> str | Reply:
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip() or utf16_units(text) >= 32768:
            return self.failure(400, "Please enter a non-empty value less than 32768 characters", context="text")
        return text

    def create_comment(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        problem = self._pr_problem(match)
        if problem is not None:
            return problem
        text = self._text(body)
        if isinstance(text, Reply):
            return text
        return Reply(201, self._comment_json(self._new_comment(int(match["id"]), text)))

    def get_comment(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        problem = self._pr_problem(match)
        if problem is not None:
            return problem
        found = self._find_comment(int(match["cid"]))
        if found is None or found[0] != int(match["id"]):
            return self.failure(
                404,
                f"Comment {match['cid']} does not exist.",
                exception="com.atlassian.bitbucket.comment.NoSuchCommentException",
            )
        return Reply(200, self._comment_json(found[1]))

    def edit_comment(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        problem = self._pr_problem(match)
        if problem is not None:
            return problem
        found = self._find_comment(int(match["cid"]))
        if found is None or found[0] != int(match["id"]):
            return self.failure(
                404,
                f"Comment {match['cid']} does not exist.",
                exception="com.atlassian.bitbucket.comment.NoSuchCommentException",
            )
        text = self._text(body)
        if isinstance(text, Reply):
            return text
        version = body.get("version")
        if not isinstance(version, int):
            return self.failure(400, "The version of the comment is required", context="version")
        comment = found[1]
        if version != comment.version:
            return self.failure(
                409,
                "You are attempting to modify a comment based on out-of-date information.",
                exception="com.atlassian.bitbucket.comment.CommentOutOfDateException",
            )
        comment.body = text
        comment.version += 1
        return Reply(200, self._comment_json(comment))

    def list_pulls(self, match: re.Match[str], query: dict[str, str], body: Any) -> Reply:
        problem = self._repo_problem(match)
        if problem is not None:
            return problem
        state = query.get("state", "OPEN")
        if state not in ("OPEN", "DECLINED", "MERGED", "ALL"):
            return self.failure(400, f"{state} is not a valid state", context="state")
        direction = query.get("direction", "INCOMING")
        if direction not in ("INCOMING", "OUTGOING"):
            return self.failure(400, f"{direction} is not a valid direction", context="direction")
        pulls = sorted(self._pulls.values(), key=lambda p: p.number, reverse=query.get("order") != "OLDEST")
        pulls = [p for p in pulls if state == "ALL" or p.state.upper() == state]
        at = query.get("at")
        if at is not None:
            branch = at.removeprefix("refs/heads/")
            pulls = [p for p in pulls if (p.base_branch if direction == "INCOMING" else p.head_branch) == branch]
        project, slug = self.repository.split("/")
        base = {"id": 1, "slug": slug, "project": {"key": project}}
        fork = {"id": 2, "slug": slug, "project": {"key": "~SOMEONE"}}
        data = [
            {
                "id": p.number,
                "version": 0,
                "title": p.title,
                "state": p.state.upper(),
                "fromRef": {
                    "id": f"refs/heads/{p.head_branch}",
                    "displayId": p.head_branch,
                    "latestCommit": p.head_sha,
                    "repository": fork if p.from_fork else base,
                },
                "toRef": {
                    "id": f"refs/heads/{p.base_branch}",
                    "displayId": p.base_branch,
                    "latestCommit": "0" * 40,
                    "repository": base,
                },
                "links": {
                    "self": [
                        {
                            "href": f"https://bitbucket.example.com/projects/{project}/repos/{slug}"
                            f"/pull-requests/{p.number}"
                        }
                    ]
                },
            }
            for p in pulls
        ]
        return self._paged(query, data)


FAKES: dict[str, type[FakeForge]] = {
    "github": FakeGitHub,
    "gitlab": FakeGitLab,
    "gitea": FakeGitea,
    "bitbucket_server": FakeBitbucketServer,
}
