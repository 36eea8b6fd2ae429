"""The one place that starts processes: one-shot commands (``run``) and long-lived ones (``spawn``).

Every failure names the command line, the exit code and what the command printed, so a user can rerun it.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.errors import NixgitopsError


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
) -> Completed:
    """Run a command to completion and capture its output as text."""
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
