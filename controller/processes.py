"""The one place that starts processes: one-shot commands (``run``) and long-lived ones (``spawn``).

Every failure names the command line, the exit code and what the command printed, so a user can rerun it.

A command may print without end (a Nix deployment tracing in a loop): ``read_lines`` and ``BoundedLines`` keep
what is read of such output within fixed bounds, for ``run(keep_stderr=...)`` and for the callers of ``spawn``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from controller.errors import NixgitopsError

LINE_LIMIT = 64 * 1024  # bytes kept of one line (see read_lines)
TAIL_LINES = 1000  # lines kept of the output that is not kept whole (see BoundedLines) ...
TAIL_BYTES = 256 * 1024  # ... and bytes
COMPACT_AT = 4 * 1024**2  # bytes of stderr read in bulk before they are sorted line by line (see _run_bounded)
KEPT_LIMIT = 64 * 1024**2  # bytes of the lines kept whole (counting Python's cost of a line), beyond which a command
# is stopped: a deployment may print lines that look like the harness's markers, and as many as it likes


class CommandFailed(NixgitopsError):
    """A command could not be started, exited non-zero or timed out."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str, why: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"`{shlex.join(self.argv)}` {why}" + (f":\n{stderr.rstrip()}" if stderr.strip() else ""))


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float | None = None,
    check: bool = True,
    keep_stderr: str | None = None,
) -> Completed:
    """Run a command to completion and capture its output as text. With ``keep_stderr`` (a prefix), what is kept of
    stderr is bounded (see ``BoundedLines``: the lines that start with it, and the end of the others); stdout is
    kept whole all the same."""
    if keep_stderr is not None:
        return _run_bounded(argv, cwd, env, input, timeout, check, keep_stderr)
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=input,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except OSError as exc:
        raise CommandFailed(argv, None, "", "", f"could not start: {exc.strerror}") from None
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandFailed(argv, None, out, err, f"did not finish within {timeout:g}s") from None
    result = Completed(list(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stdout, proc.stderr, f"exited with code {proc.returncode}")
    return result


def _run_bounded(
    argv: Sequence[str],
    cwd: str | None,
    env: Mapping[str, str] | None,
    input: str | None,
    timeout: float | None,
    check: bool,
    prefix: str,
) -> Completed:
    """``run`` with stderr kept within bounds: the lines that start with ``prefix``, and of the others the end
    (``BoundedLines``); a command whose kept lines reach KEPT_LIMIT is stopped (SIGKILL), and its stderr is then
    only a line that says why. Stderr is read in bulk, and sorted line by line only past COMPACT_AT bytes or when
    too many other lines came: a plan of 10,000 resources prints 10,000 to 30,000 marker lines, which cost 0.1 s
    of Python (and of the GIL) line by line."""
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise CommandFailed(argv, None, "", "", f"could not start: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    stdout: list[bytes] = []
    kept = prefix.encode()
    stderr = BoundedLines(lambda line: line.startswith(prefix))
    pending: list[bytes] = []  # read, not sorted yet
    sizes = [0, 0]  # bytes pending; 1 once anything was sorted line by line
    stopped = False
    lock = threading.Lock()  # stderr is read while the reader may still add to it (a child holding the pipe open)

    def sort_lines(final: bool) -> None:
        """Feed the complete lines pending (all of them when ``final``) to ``stderr``."""
        nonlocal stderr, stopped
        data = b"".join(pending)
        cut = len(data) if final else data.rfind(b"\n") + 1
        rest = data[cut:]
        pending[:] = [rest] if rest else []
        sizes[0], sizes[1] = len(rest), 1
        for raw in data[:cut].splitlines():
            if stopped:  # given up on (time limit): what is left is not read
                return
            if len(raw) > LINE_LIMIT and not raw.startswith(kept):
                raw = raw[:LINE_LIMIT] + f" [... {len(raw) - LINE_LIMIT} more bytes of this line were dropped]".encode()
            stderr.add(raw.decode(errors="replace"))
            if stderr.full:
                proc.kill()
                stopped = True
                stderr = BoundedLines(stderr.keep)
                stderr.add(
                    f"(nixgitops stopped the command (SIGKILL): it printed more than {KEPT_LIMIT // 1024**2} MiB"
                    " of the lines that are always kept; what it printed was dropped)"
                )
                pending.clear()
                return

    # the unfinished last line pending: its bytes; bytes of it dropped (an unmarked line past LINE_LIMIT); whether
    # it is a marker line (kept whole, up to KEPT_LIMIT), once it is past LINE_LIMIT
    line = {"size": 0, "dropped": 0, "marked": False}

    def add(chunk: bytes) -> None:
        end = chunk.find(b"\n")
        if line["dropped"]:  # dropping the rest of an overlong line, up to its end
            if end < 0:
                line["dropped"] += len(chunk)
                return
            note = f" [... {line['dropped'] + end} more bytes of this line were dropped]".encode()
            chunk = note + chunk[end:]
            end, line["dropped"] = len(note), 0
        pending.append(chunk)
        sizes[0] += len(chunk)
        if end >= 0:
            line["size"], line["marked"] = len(chunk) - chunk.rfind(b"\n") - 1, False
        else:
            line["size"] += len(chunk)
        if line["size"] > LINE_LIMIT and not line["marked"]:  # decided once per line
            data = b"".join(pending)
            start = data.rfind(b"\n") + 1
            if data.startswith(kept, start):
                line["marked"] = True
                pending[:] = [data]
            else:  # cut it here; the rest of it is only counted
                pending[:] = [data[: start + LINE_LIMIT]]
                sizes[0], line["size"], line["dropped"] = len(pending[0]), 0, len(data) - start - LINE_LIMIT
        if line["marked"] and line["size"] > KEPT_LIMIT:
            sort_lines(final=True)  # a marker line that big fills what is kept: the command is stopped
        elif end >= 0 and sizes[0] > COMPACT_AT:  # only when a line ended: sorting needs whole lines
            sort_lines(final=False)

    def read_stderr(stream: IO[bytes]) -> None:
        while chunk := stream.read1(1 << 16):  # type: ignore[attr-defined]
            with lock:  # to the end, past a stop: the command must not block on a full pipe
                if not stopped:
                    add(chunk)

    def give_up() -> None:
        nonlocal stopped
        stopped = True  # without the lock: a sort in progress sees it and stops

    def stderr_text() -> str:
        with lock:
            if not stopped and not sizes[1]:
                data = b"".join(pending)
                lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
                marked = data.count(b"\n" + kept) + (1 if data.startswith(kept) else 0)
                if lines - marked <= TAIL_LINES:  # the common case: nothing to drop, nothing to sort
                    return data.decode(errors="replace")
            if not stopped:
                sort_lines(final=True)
            return stderr.text()

    def write_stdin(stream: IO[bytes], text: str) -> None:
        with contextlib.suppress(OSError):  # a command that exits without reading all its input
            stream.write(text.encode())
        with contextlib.suppress(OSError):
            stream.close()

    threads = [
        threading.Thread(target=lambda out: stdout.append(out.read()), args=(proc.stdout,), daemon=True),
        threading.Thread(target=read_stderr, args=(proc.stderr,), daemon=True),
    ]
    if input is not None:
        assert proc.stdin is not None
        threads.append(threading.Thread(target=write_stdin, args=(proc.stdin, input), daemon=True))
    for thread in threads:
        thread.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    finished = True
    try:
        # The end of the output first: joining a thread sleeps until it ends, where Popen.wait(timeout) polls
        # with sleeps of up to 50 ms (measured: 30-50 ms added to every evaluation).
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            finished = finished and not thread.is_alive()
        if finished:
            proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        finished = False
    if not finished:
        give_up()
        proc.kill()
        proc.wait()
        for thread in threads:
            thread.join(timeout=5)
    if not any(thread.is_alive() for thread in threads):  # else a child of the command still holds them
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # flushing what a dead command did not read
                    stream.close()
    err = stderr_text()
    out = b"".join(stdout).decode(errors="replace") if stdout else ""
    if not finished:
        raise CommandFailed(argv, None, out, err, f"did not finish within {timeout:g}s")
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, out, err, f"exited with code {proc.returncode}")
    return Completed(list(argv), proc.returncode, out, err)


def read_lines(stream: IO[bytes], *, whole: bytes | None = None) -> Iterator[str]:
    """The lines of ``stream`` as text, without their newline. A line longer than LINE_LIMIT bytes is cut there,
    with a note of how much was dropped, unless it starts with ``whole``."""
    while chunk := stream.readline(LINE_LIMIT):
        if chunk.endswith(b"\n") or len(chunk) < LINE_LIMIT:  # shorter without a newline: the last line
            yield chunk.decode(errors="replace").rstrip("\n")
            continue
        parts, dropped, keep = [chunk], 0, whole is not None and chunk.startswith(whole)
        while more := stream.readline(LINE_LIMIT):
            if keep:
                parts.append(more)
            else:
                dropped += len(more.rstrip(b"\n"))
            if more.endswith(b"\n"):
                break
        text = b"".join(parts).decode(errors="replace").rstrip("\n")
        yield text + (f" [... {dropped} more bytes of this line were dropped]" if dropped else "")


class BoundedLines:
    """Lines of a command's output, kept within bounds, in their order: every line ``keep`` accepts (up to
    KEPT_LIMIT bytes in all: then ``full``), and of the others the last TAIL_LINES (and TAIL_BYTES), after a line
    saying how many were dropped before them."""

    def __init__(self, keep: Callable[[str], bool]) -> None:
        self.keep = keep
        self.count = 0
        self.dropped = 0
        self._kept: list[tuple[float, str]] = []
        self._kept_bytes = 0
        self._tail: deque[tuple[float, str]] = deque()
        self._tail_bytes = 0

    @property
    def full(self) -> bool:
        return self._kept_bytes >= KEPT_LIMIT

    def add(self, line: str) -> None:
        self.count += 1
        if self.keep(line):
            self._kept.append((self.count, line))
            self._kept_bytes += len(line) + 64  # with the cost of a str and of its slot in the list
            return
        self._tail.append((self.count, line))
        self._tail_bytes += len(line)
        while len(self._tail) > TAIL_LINES or (self._tail_bytes > TAIL_BYTES and len(self._tail) > 1):
            self._tail_bytes -= len(self._tail.popleft()[1])
            self.dropped += 1

    def lines(self) -> list[str]:
        lines = sorted([*self._kept, *self._tail])
        if self.dropped:  # before the first line of the tail: the lines dropped came before it
            lines.append((self._tail[0][0] - 0.5, f"({self.dropped} earlier lines of output were dropped)"))
            lines.sort()
        return [line for _, line in lines]

    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines())


def spawn(
    argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None, stdout: bool = True
) -> subprocess.Popen[bytes]:
    """Start a long-lived process with pipes on stdin, stdout (unless ``stdout`` is false: discarded) and stderr
    (raises OSError if it cannot start)."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def run_logged(
    argv: Sequence[str], *, timeout: float | None, on_line: Callable[[str], None] | None = None
) -> Completed:
    """Run a command to completion, handing each line it prints on stderr to ``on_line`` as it comes (a build's
    log); of stderr the end is kept (``BoundedLines``), stdout whole. Raises ``CommandFailed`` if it cannot start
    or does not finish within ``timeout`` (then it is killed, with its process group)."""
    try:
        proc = spawn(argv)
    except OSError as exc:
        raise CommandFailed(argv, None, "", "", f"could not start: {exc.strerror}") from None
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.close()
    stdout: list[bytes] = []
    stderr = BoundedLines(lambda line: False)

    def read_stderr(stream: IO[bytes]) -> None:
        for line in read_lines(stream):
            stderr.add(line)
            if on_line is not None:
                on_line(line)

    threads = [
        threading.Thread(target=lambda out: stdout.append(out.read()), args=(proc.stdout,), daemon=True),
        threading.Thread(target=read_stderr, args=(proc.stderr,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a build's children too
        proc.wait()
        for thread in threads:
            thread.join(timeout=5)
        raise CommandFailed(argv, None, "", stderr.text(), f"did not finish within {timeout:g}s") from None
    for thread in threads:
        thread.join(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            stream.close()
    return Completed(list(argv), proc.returncode, b"".join(stdout).decode(errors="replace"), stderr.text())
