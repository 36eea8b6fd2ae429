"""A persistent Nix evaluator: one ``nix repl`` process kept for the passes of one apply.

A ``nix-instantiate`` process per pass parses the deployment again every time: about 40 ms for a 1 MB file of
10,000 resources, paid once per level of a chain. A repl parses each file once (Nix caches imports by path), so a
pass costs what it evaluates: about 2 ms to find one resource's inputs in a deployment of 10,000.

The repl is driven line by line on stdin; every answer comes back on stderr through ``builtins.trace``:

    __k = builtins.fromJSON (builtins.readFile "<known.json>")          # once: the outputs known at the start
    builtins.trace ("nixgitops:result " + builtins.toJSON (__h { argsFile = "<args.json>"; knownOutputs = __k;
      knownDir = "<dir>"; })) null                                       # (one line) each pass
    builtins.trace "nixgitops:end <n>" null

Outputs that become known later are written to ``<dir>/<path>.json``, read by the harness only when a resource
reads them: a pass sends only what changed, and no repl variable is assigned per pass (each assignment keeps a
slot of the repl's environment, and the value in it, alive for good).

Everything printed between two end markers belongs to one request: the harness's own markers, the result,
or Nix's error. Only fixed lines with balanced syntax are sent (data travels in files), so a request can never
leave the repl waiting for a continuation line. Stdout (the repl's echo and printed values) is discarded.

A deployment may trace without end: the time limit is checked at every line read, and of the lines that are not
markers only the last ``MAX_LINES`` are kept (``processes.BoundedLines``).

The repl runs against the ``dummy://`` store (or ``NIXGITOPS_NIX_STORE``), which cannot copy anything into
a store; an evaluation that needs to (``"${./file}"``) fails there, and the caller falls back to
``nix-instantiate --readonly-mode`` (see ``NeedsStore``). During an apply that builds, it runs against the real
store instead, and writes the derivations it evaluates, to be built.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from controller.errors import EvaluationError
from controller.model import KnownOutputs
from controller.processes import KEPT_LIMIT, TAIL_LINES, BoundedLines, read_lines, spawn
from controller.sensitive import harness_default, redact, remember

INITIAL_HEAP = 32 * 1024 * 1024
MAX_LINES = TAIL_LINES  # lines of one answer kept besides the markers: the last; the others are dropped
MARK = "trace: nixgitops:"  # how the harness's markers start: always kept
RESULT = f"{MARK}result "
END = f"{MARK}end "
ANNOUNCED = f"{MARK}sensitive "  # a value controller/nix/sensitive.nix marked (see evaluation.parse_traces)
QUEUE = 256  # lines read ahead of the request's reader, at most


class NeedsStore(EvaluationError):
    """The evaluation needs a Nix store the repl does not have; evaluate it with ``nix-instantiate``."""


class ReplTimeout(EvaluationError):
    """A request did not finish in time; the repl was stopped."""


class ReplUnavailable(EvaluationError):
    """The repl could not be started or stopped answering; evaluate with ``nix-instantiate``."""


class NixRepl:
    """One ``nix repl`` process, with the harness loaded. Not thread-safe: one request at a time."""

    def __init__(
        self,
        harness: Path,
        *,
        cwd: str,
        show_trace: bool = False,
        timeout: float | None = None,
        wrap: Callable[[list[str], Path], list[str]] = lambda argv, scratch: argv,
        store: list[str] | None = None,
        private_store: bool = False,
    ) -> None:
        """``wrap`` turns the repl's command line into the one to run (limits, options), given the scratch
        directory whose files the repl reads. ``store``: the options that name the store and configure Nix
        (``nixcli.common_options``), for a repl that writes derivations to be built; None: ``dummy://`` (or
        ``NIXGITOPS_NIX_STORE``), which writes nothing. ``private_store``: instead of ``dummy://``, a store of its
        own in its scratch directory (removed with it), for deployments that must write small files to evaluate
        (``builtins.toFile``, which nixgitops's ``sensitive`` mark uses): still nothing reaches the real store."""
        self.timeout = timeout
        self._dir = Path(tempfile.mkdtemp(prefix="nixgitops-repl-"))
        self._known_dir = self._dir / "known"
        self._known_dir.mkdir()
        self._files = 0
        self._requests = 0
        self._called = False  # whether __c holds the deployment's value for the current known outputs
        self._seen: set[str] = set()  # the paths whose outputs the repl has been given
        self._known: KnownOutputs | None = None  # the instance whose changes the repl has seen ...
        self._cursor = 0  # ... up to this index of its change log
        self._lines: queue.Queue[str | None] = queue.Queue(QUEUE)
        self._closed = False
        # markers no deployment can print by chance or on purpose: it cannot know this session's nonce
        nonce = secrets.token_hex(8)
        self._result = f"{RESULT}{nonce} "
        self._end = f"{END}{nonce} "
        if store is None and private_store:
            store = ["--store", str(self._dir / "store")]
        elif store is None:
            store = ["--store", os.environ.get("NIXGITOPS_NIX_STORE") or "dummy://"]
        argv = ["nix", "--extra-experimental-features", "nix-command", "repl", *store]
        if show_trace:
            argv.append("--show-trace")
        try:
            self.proc = spawn(wrap(argv, self._dir), cwd=cwd, stdout=False, env=_environment())
        except OSError as exc:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise ReplUnavailable(f"cannot start `nix repl`: {exc.strerror}") from None
        assert self.proc.stderr is not None
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc.stderr,), daemon=True)
        self._pump_thread.start()
        try:
            self._send(f"__h = import {_nix_string(str(harness))}", "__k = { }")
            self._answer()
        except EvaluationError:
            self.close(kill=True)
            raise

    def _pump(self, stream: IO[bytes]) -> None:
        for line in read_lines(stream, whole=self._result.encode()):  # to the end: the repl must not block
            self._offer(line)
        self._offer(None)

    def _offer(self, line: str | None) -> None:
        """Queue ``line`` for the reader, waiting while the queue is full, unless the repl is closed."""
        while not self._closed:
            try:
                self._lines.put(line, timeout=0.1)
                return
            except queue.Full:
                continue

    def _send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        if self._closed:
            raise ReplUnavailable("`nix repl` was stopped")
        self._requests += 1
        text = (
            "".join(f"{line}\n" for line in lines)
            + f'builtins.trace "{self._end.removeprefix("trace: ")}{self._requests}" null\n'
        )
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except OSError:
            raise ReplUnavailable("`nix repl` exited") from None

    def _answer(self) -> tuple[str | None, list[str]]:
        """The result of the last request (None if it printed none) and the other lines it printed, up to its end
        marker, within the time limit of the whole request, checked at every line (a deployment may trace without
        end). The markers are kept, and the last MAX_LINES of the other lines."""
        end = f"{self._end}{self._requests}"
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        result: str | None = None
        printed = BoundedLines(lambda line: line.startswith(MARK))
        while True:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                self.close(kill=True)
                raise ReplTimeout(f"`nix repl` did not answer within {self.timeout:g}s")
            try:
                line = self._lines.get(timeout=wait)
            except queue.Empty:
                continue  # the deadline has passed: stopped above
            if line is None:
                self.close(kill=True)
                lines = printed.lines()
                for x in lines:  # (what sensitive.nix announced: redacted from what is said, never said itself)
                    if x.startswith(ANNOUNCED):
                        with contextlib.suppress(ValueError):
                            remember(json.loads(x[len(ANNOUNCED) :]))
                last = [redact(x) for x in lines if x.strip() and not x.startswith(MARK)][-5:]
                raise ReplUnavailable("`nix repl` exited" + (": " + " / ".join(last) if last else ""))
            if line == end:
                return result, printed.lines()
            if line.startswith(self._result):  # no deployment can print it: it does not know the nonce
                result = line[len(self._result) :]
                continue
            printed.add(line)
            if printed.full:
                self.close(kill=True)
                raise EvaluationError(
                    f"The deployment printed more than {KEPT_LIMIT // 1024**2} MiB of lines that start with"
                    f" `{MARK}`, as the harness's markers do, and was stopped."
                )

    def _file(self, content: Any) -> str:
        self._files += 1
        path = self._dir / f"{self._files}.json"
        try:
            path.write_text(json.dumps(content, separators=(",", ":"), check_circular=False, default=harness_default))
        except OSError as exc:
            raise ReplUnavailable(f"cannot write the repl's input file {path}: {exc}") from None
        return _nix_string(str(path))

    def _sync_known(self, known: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Bring the repl's view of the known outputs up to ``known``. When ``known`` is the ``KnownOutputs`` of the
        last pass, only what changed since is written, one file per resource in the known directory; otherwise a
        snapshot replaces everything (the one variable assigned per session: each assignment keeps a slot of the
        repl's environment alive for good)."""
        if isinstance(known, KnownOutputs) and known is self._known:
            changed = known.changes[self._cursor :]
            self._cursor += len(changed)
            for path in dict.fromkeys(changed):
                outputs = known.get(path)
                if path in self._seen:  # changed or dropped: the old value may have been read; call afresh
                    self._called = False
                self._seen.add(path)
                try:
                    (self._known_dir / f"{path}.json").write_text(
                        json.dumps(outputs, separators=(",", ":"), default=harness_default)
                    )
                except OSError as exc:
                    raise ReplUnavailable(f"cannot write the known outputs of {path!r}: {exc}") from None
            return []
        shutil.rmtree(self._known_dir, ignore_errors=True)
        self._known_dir.mkdir()
        if isinstance(known, KnownOutputs):
            self._known, self._cursor = known, len(known.changes)
            snapshot: Mapping[str, Any] = known.snapshot()
        else:
            self._known, snapshot = None, known
        self._called = False
        self._seen = set(snapshot)
        return [f"__k = builtins.fromJSON (builtins.readFile {self._file(dict(snapshot))})"]

    def evaluate(self, args: Mapping[str, Any], known: Mapping[str, Mapping[str, Any]]) -> tuple[str, list[str]]:
        """Run the harness with ``args`` (without ``known``) and ``known``: Nix's JSON answer and the other lines
        printed (the harness's markers). Raises EvaluationError with Nix's message when evaluation fails."""
        sync = self._sync_known(known)
        where = _nix_string(str(self._known_dir))
        argv = f"argsFile = {self._file(dict(args))}; knownOutputs = __k; knownDir = {where};"
        if not self._called:  # the deployment is called once per session (see the harness), here
            sync.append(f"__c = __h {{ {argv} exposeCall = true; }}")
            self._called = True
        call = f"__h {{ {argv} called = __c; }}"
        marker = self._result.removeprefix("trace: ")
        self._send(*sync, f'builtins.trace ("{marker}" + builtins.toJSON ({call})) null')
        result, lines = self._answer()
        if result is not None:
            return result, lines
        text = "\n".join(lines)
        for line in lines:
            if "is not supported by store" in line:
                raise NeedsStore(line.strip())
        raise EvaluationError(text)

    def close(self, *, kill: bool = False) -> None:
        """End the repl: EOF on its input, or (``kill``, or when EOF is not enough) SIGKILL."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        if self._closed:
            return
        self._closed = True
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):  # EOF ends the repl; a dead one raises here, and is closed all the same
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a repl that does not exit on EOF is killed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._pump_thread.join(timeout=5)
        self.proc.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _environment() -> dict[str, str]:
    """Nix sizes its collector's first heap at a quarter of the RAM, up to 384 MiB, and only collects when that is
    full; a repl that lives for a whole apply would hold all of it. A small first heap makes it collect early."""
    env = dict(os.environ)
    env.setdefault("GC_INITIAL_HEAP_SIZE", str(INITIAL_HEAP))
    return env


def _nix_string(text: str) -> str:
    """``text`` as a Nix string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'
