"""A real git server on loopback (`git daemon` with push enabled), and a developer's clone that pushes to it."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from conftest import GIT_ENV, git, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GitServer:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--informative-errors",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                f"--base-path={self.base}",
                str(self.base),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = self.proc

        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(listening, "git daemon listening", timeout=15, alive=lambda: proc.poll() is None)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


class Developer:
    """A clone of the served repository, committing and pushing as a developer would."""

    def __init__(self, server: GitServer, root: Path, name: str = "infra.git") -> None:
        self.server = server
        self.bare = server.base / name
        git(server.base, "init", "-q", "--bare", "-b", "main", str(self.bare))
        self.work = root / "work"
        self.work.mkdir()
        git(self.work, "init", "-q", "-b", "main")
        git(self.work, "remote", "add", "origin", server.url(name))

    def push(self, text: str, *extra: str, message: str = "change") -> str:
        (self.work / "deployment.nix").write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", *extra, "-m", message)
        git(self.work, "push", "-q", "origin", "HEAD:refs/heads/main")
        return git(self.work, "rev-parse", "HEAD").strip()

    def push_signed(self, text: str, config: list[str], env: dict[str, str] | None = None) -> None:
        """Commit signed (``config``: git -c options naming the key) and push."""
        (self.work / "deployment.nix").write_text(text)
        git(self.work, "add", "-A")
        subprocess.run(
            ["git", *config, "commit", "-q", "-S", "-m", "signed"],
            cwd=self.work,
            env={**os.environ, **GIT_ENV, "HOME": str(self.work), **(env or {})},
            check=True,
        )
        git(self.work, "push", "-q", "origin", "HEAD:refs/heads/main")

    def state_log(self) -> str:
        env = {**os.environ, **GIT_ENV}
        done = subprocess.run(
            ["git", "--git-dir", str(self.bare), "log", "--format=%H%n%B", "nixgitops/state"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        return done.stdout if done.returncode == 0 else ""
