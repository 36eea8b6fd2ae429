"""What the benchmarks share: deployments of N resources, Git repositories, timed processes, a daemon, a table."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "init.defaultBranch=main"]
NIXGITOPS = [sys.executable, "-m", "controller"]
SHAPES = ("independent", "chained")


def deployment(n: int, shape: str, out: Path) -> str:
    """N ``local.file`` resources writing into the directory ``out`` (created here); chained: each one's contents
    read the outputs of the one before."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["{ members, providers, ... }:", "{"]
    for i in range(n):
        reads = f" + builtins.toJSON members.r{i - 1}.outputs" if shape == "chained" and i else ""
        lines.append(
            f'  members.r{i} = {{ type = providers.local.file; inputs = {{ name = "{out}/r{i}"; contents = "v{i}"'
            f"{reads}; }}; }};"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def floor_expression(n: int) -> str:
    """The same attribute set written out, for a bare ``nix-instantiate --eval --strict --json``."""
    body = " ".join(
        f'r{i} = {{ type = "local.file"; inputs = {{ name = "/out/r{i}"; contents = "v{i}"; }}; }};' for i in range(n)
    )
    return "{ " + body + " }\n"


def sh(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout


def git_repo(path: Path, files: dict[str, str], *, bare_remote: Path | None = None) -> None:
    """A repository at ``path`` with ``files`` committed (and pushed to a new bare ``bare_remote``)."""
    path.mkdir(parents=True, exist_ok=True)
    sh(*GIT, "init", "-q", str(path))
    for name, text in files.items():
        (path / name).write_text(text)
    sh(*GIT, "add", "-A", cwd=path)
    sh(*GIT, "commit", "-qm", "bench", cwd=path)
    if bare_remote is not None:
        sh(*GIT, "init", "-q", "--bare", str(bare_remote))
        sh(*GIT, "push", "-q", str(bare_remote), "HEAD:refs/heads/main", cwd=path)


@dataclass(frozen=True)
class Timed:
    seconds: float
    max_rss_mb: float
    """The largest resident set of the process or any process it waited for (ru_maxrss of wait4)."""


def timed(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Timed:
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or dict(os.environ)
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed in {cwd}:\n{err.decode(errors='replace')[-2000:]}")
    return Timed(seconds, usage.ru_maxrss / 1024)


def median_of(k: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(k))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """``nixgitops run`` on a config file, stopped with SIGTERM."""

    def __init__(self, config: Path, port: int) -> None:
        self.port = port
        self.log = (config.parent / "daemon.log").open("w")
        self.proc = subprocess.Popen([*NIXGITOPS, "run", "--config", str(config)], stderr=self.log, stdout=self.log)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/healthz")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon did not start; see {self.log.name}") from None
                time.sleep(0.05)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes = b"", headers: dict[str, str] | None = None, timeout: float = 600) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers or {}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def reconcile(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.post(f"/api/v1/deployments/{name}/reconcile?wait=true")
        return result

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass(frozen=True)
class Row:
    scenario: str
    size: str
    figure: str
    floor: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: str = "-"


class Table:
    COLUMNS = ("scenario", "size", "figure", "floor", "ratio", "target", "met")

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print("  " + " | ".join(str(getattr(row, c)) for c in self.COLUMNS), flush=True)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(str(getattr(r, c)) for c in self.COLUMNS) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


def size_label(n: int, shape: str) -> str:
    return f"{n:,} {shape}"


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"
