"""Talking to provider processes: one process serves one request at a time; a pool per provider reuses them.

The wire has no request ids, so a process is leased to one caller for one request. A run keeps up to
``size`` processes per provider and closes them (EOF on stdin) at the end. A process that dies, hangs past
the timeout or breaks the protocol is stopped and replaced; an ``errorResponse`` leaves it in the pool.

What a failure means for the request (``ProviderError.fatal``, see docs/provider-protocol.md): an
``errorResponse``, a process that had ended before the request was sent, and a process that ends by itself (any
exit status) without a response line to a delete or a read have *failed* the request: nothing happened. A
process killed by a signal, stopped by us (timeout, a broken protocol), or ending during a create or an update,
leaves the outcome *unknown*: the journal keeps the operation for recovery to settle (a create may have been
carried out before the process died; nothing may be lost).
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import IO, Any

from controller import protocol
from controller.errors import ProviderError
from controller.model import ProviderSpec
from controller.processes import spawn
from controller.sensitive import redact, remember

Log = Callable[[str], None]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class ProviderProcess:
    """One running provider process."""

    def __init__(self, spec: ProviderSpec, *, cwd: str | None, log: Log | None) -> None:
        self.spec = spec
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._lines: queue.Queue[bytes] = queue.Queue()
        argv = [spec.executable, *spec.args]
        try:
            self.proc = spawn(argv, cwd=cwd)
        except OSError as exc:
            raise ProviderError(
                f"Cannot start provider {spec.name!r} ({spec.executable}): {exc.strerror}. Check"
                f" providers.{spec.name}.executable in the deployment.",
                fatal=True,
            ) from None
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._log = log
        self._held: list[str] | None = None  # stderr lines of the request in flight, logged once it is answered
        self._held_lock = threading.Lock()
        self._stdout_pump = threading.Thread(target=self._pump_stdout, args=(self.proc.stdout,), daemon=True)
        self._stdout_pump.start()
        self._stderr_pump = threading.Thread(target=self._pump_stderr, args=(self.proc.stderr,), daemon=True)
        self._stderr_pump.start()

    def _pump_stdout(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._lines.put(line)
        self._lines.put(b"")

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.stderr_tail.append(line)
            with self._held_lock:
                if self._held is not None:
                    self._held.append(line)
                    continue
            if self._log is not None:
                self._log(f"[{self.spec.name}] {redact(line)}")

    def _flush_held(self) -> None:
        """Log the stderr lines held during a request: a provider may print a secret it returns before it returns
        it, and only its answer says which values are secret (``hide``), so they are redacted only then."""
        with self._held_lock:
            held, self._held = self._held or [], None
        if self._log is not None:
            for line in held:
                self._log(f"[{self.spec.name}] {redact(line)}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(
        self,
        message: Mapping[str, Any],
        *,
        what: str,
        timeout: float,
        before_send: Callable[[int], None] | None = None,
        hide: Collection[str] = (),
    ) -> dict[str, Any]:
        """Send one request and wait for its response. ``what`` names the request in errors;
        ``before_send`` is called with the process id just before the request goes out. ``hide``: the outputs of
        the answer that are sensitive, redacted from what the provider prints meanwhile."""
        with self._held_lock:
            self._held = []
        try:
            body = self._request(message, what=what, timeout=timeout, before_send=before_send)
            outputs = body.get("outputProperties")
            if hide and isinstance(outputs, dict):
                for name in hide:
                    if name in outputs:
                        remember(outputs[name])
            return body
        finally:
            self._flush_held()

    def _request(
        self,
        message: Mapping[str, Any],
        *,
        what: str,
        timeout: float,
        before_send: Callable[[int], None] | None,
    ) -> dict[str, Any]:
        kind = protocol.kind_of(message)
        assert self.proc.stdin is not None
        if not self._lines.empty():
            stray = self._lines.get_nowait()
            self.stop()
            raise ProviderError(
                f"Provider {self.spec.name!r} broke the protocol: it wrote a line nobody asked for ({stray[:200]!r})"
                f" before {what}; one request gets exactly one response line. It was stopped.{self._tail()}",
                fatal=True,
            )
        data = protocol.encode(message)  # (before the journal's intent: a request that cannot be made is not one)
        if before_send is not None:
            before_send(self.proc.pid)
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail(f"had exited before {what} could be sent", kind=kind, sent=False)
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise ProviderError(
                f"Provider {self.spec.name!r} did not answer {what} within {timeout:g}s; it was stopped.{self._tail()}",
                fatal=True,
            ) from None
        if not line:
            self._fail(f"exited while handling {what}", kind=kind, sent=True)
        try:
            return protocol.decode_response(line, kind)
        except protocol.ErrorReply as exc:
            raise ProviderError(f"Provider {self.spec.name!r} refused {what}: {exc}") from None
        except protocol.ProtocolViolation as exc:
            self.stop()
            raise ProviderError(
                f"Provider {self.spec.name!r} broke the protocol answering {what}: {exc}. It was stopped."
                f"{self._tail()}",
                fatal=True,
            ) from None

    def _fail(self, what: str, *, kind: str, sent: bool) -> None:
        """The process ended without answering. It never got the request, or it exited by itself (any status) on a
        delete or a read: the request failed and nothing happened. Killed by a signal, stopped by us, or exited
        during a create or an update: the outcome is unknown (recovery settles it)."""
        stopped = False
        try:
            code: int | None = self.proc.wait(timeout=5)
        except Exception:
            self.stop()
            stopped = True
            code = self.proc.returncode
        if stopped or code is None:
            how, unknown = "(it closed its output but did not end within 5s, so it was stopped)", sent
        elif code < 0:
            how, unknown = f"(killed by signal {_signal_name(-code)})", sent
        else:  # a delete or a read that made it exit did nothing to keep (NixOps4's provider exits on both); a
            # create or an update may have been carried out before it died
            how, unknown = f"(exit code {code})", sent and kind not in (protocol.DESTROY, protocol.READ)
        if unknown:
            meaning = (
                " Whether it carried out the request is not known: the journal keeps the operation, and the next run"
                " settles it before it touches this resource."
            )
        else:
            meaning = " It did not answer, so the request counts as failed: nothing was changed or recorded."
            if kind in (protocol.DESTROY, protocol.READ):
                meaning += f" ({kind} is an extension of NixOps4's protocol; this provider may not implement it.)"
        raise ProviderError(
            f"Provider {self.spec.name!r} ({self.spec.executable}) {what} {how}.{meaning}{self._tail()}",
            fatal=unknown,
        )

    def _tail(self) -> str:
        if not self.alive:  # let the pump read the last lines of a process that just ended
            self._stderr_pump.join(timeout=1.0)
        if not self.stderr_tail:
            return ""
        return "\nIts last lines on stderr:\n" + "\n".join(f"  {line}" for line in self.stderr_tail)

    def close(self, grace: float = 5.0) -> None:
        """EOF on stdin asks the provider to exit; it is killed if it does not within ``grace`` seconds."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=grace)
        except Exception:
            self.stop()
        self._release()

    def stop(self) -> None:
        """Kill the process (and anything it started) now."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        self._release()

    def _release(self) -> None:
        """Close our ends of the pipes once the pumps have read what the ended process left in them."""
        self._stdout_pump.join(timeout=2)
        self._stderr_pump.join(timeout=2)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class ProviderPool:
    """Up to ``size`` processes of one provider, each leased to one request at a time."""

    def __init__(self, spec: ProviderSpec, *, size: int, cwd: str | None, log: Log | None) -> None:
        self.spec = spec
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[ProviderProcess] = []
        self._all: list[ProviderProcess] = []
        self._lock = threading.Lock()
        self._cwd = cwd
        self._log = log
        self.started = 0

    @contextlib.contextmanager
    def lease(self) -> Iterator[ProviderProcess]:
        with self._slots:
            with self._lock:
                process = self._idle.pop() if self._idle else None
            if process is None or not process.alive:
                process = ProviderProcess(self.spec, cwd=self._cwd, log=self._log)
                with self._lock:
                    self._all.append(process)
                    self.started += 1
            try:
                yield process
            finally:
                if process.alive:
                    with self._lock:
                        self._idle.append(process)

    def close(self) -> None:
        with self._lock:
            processes, self._all, self._idle = self._all, [], []
        for process in processes:
            process.close()


class Providers:
    """The provider pools of one run, by provider name."""

    def __init__(
        self,
        specs: Mapping[str, ProviderSpec],
        *,
        size: int = 8,
        timeout: float = 300.0,
        cwd: str | None = None,
        log: Log | None = None,
    ) -> None:
        self.specs = dict(specs)
        self.timeout = timeout
        self._pools = {name: ProviderPool(spec, size=size, cwd=cwd, log=log) for name, spec in specs.items()}

    def call(
        self,
        provider: str,
        message: Mapping[str, Any],
        *,
        what: str,
        before_send: Callable[[int], None] | None = None,
        hide: Collection[str] = (),
    ) -> dict[str, Any]:
        pool = self._pools.get(provider)
        if pool is None:
            raise ProviderError(
                f"No provider {provider!r} is declared, so {what} cannot be sent. Declare it in the deployment"
                " (providers.<name> = { executable; resourceTypes; }) until its resources are deleted."
            )
        with pool.lease() as process:
            return process.request(message, what=what, timeout=self.timeout, before_send=before_send, hide=hide)

    def started(self) -> dict[str, int]:
        """How many processes each provider has started in this run."""
        return {name: pool.started for name, pool in self._pools.items()}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    def __enter__(self) -> Providers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
