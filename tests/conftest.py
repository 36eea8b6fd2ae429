"""Shared fixtures: real Git repositories in temporary directories, and the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gitserver import GitServer

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"  # ../shared/reference: nixpkgs-lib, flake-parts, NixOps4's provider

# No binary cache: nothing here can reach one, and a build must never wait on it (each Nix command of the tests
# and of the nixgitops they run inherits this; nix.conf and --option still add to it).
os.environ.setdefault("NIX_CONFIG", "substituters =")
NOTES_PROVIDER = ROOT / "tests" / "providers" / "notes.sh"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


@pytest.fixture(autouse=True)
def _forget_sensitive_values() -> Iterator[None]:
    """Each test starts with no sensitive value remembered for redaction (a value of one test, say "other", would
    otherwise be redacted from the next test's output)."""
    from controller.sensitive import forget_all

    forget_all()
    yield
    forget_all()


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout


ONE_MEMO = "{ members, providers, ... }: { members.m = { type = providers.local.memo; inputs.initialize_with = 1; }; }"


def local_remote(root: Path, name: str, deployment: str = ONE_MEMO) -> Path:
    """A bare repository ``root/<name>.git`` whose main branch holds ``deployment``, pushed from ``root/<name>.src``."""
    remote = root / f"{name}.git"
    git(root, "init", "-q", "--bare", "-b", "main", str(remote))
    work = root / f"{name}.src"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "deployment.nix").write_text(deployment)
    git(work, "add", "-A")
    git(work, "commit", "-qm", name)
    git(work, "push", "-q", str(remote), "main")
    return remote


@dataclass
class Checkout:
    """A Git checkout holding a deployment, and the nixgitops command line run inside it."""

    path: Path

    def write(self, text: str, name: str = "deployment.nix") -> None:
        (self.path / name).write_text(textwrap.dedent(text))

    def commit(self, message: str = "change") -> str:
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD").strip()

    def deploy(self, text: str) -> str:
        self.write(text)
        return self.commit()

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller", *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run(*args)
        assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        return done

    def plan(self) -> dict[str, dict[str, Any]]:
        document = json.loads(self.ok("plan", "--json").stdout)
        return {c["path"]: c for c in document["changes"]}

    def state(self) -> dict[str, dict[str, Any]]:
        return {r["path"]: r for r in json.loads(self.ok("state", "list", "--json").stdout)}

    def state_log(self) -> list[str]:
        return git(self.path, "log", "--format=%B%x00", "nixgitops/state").split("\0")[:-1]


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    # What the local provider writes stays out of the commits; only the deployment is source.
    (path / ".gitignore").write_text("/*\n!/.gitignore\n!/deployment.nix\n!/deploy/\n")
    return Checkout(path)


@pytest.fixture
def notes_log(tmp_path: Path) -> Path:
    return tmp_path / "notes.log"


@pytest.fixture
def notes_provider(notes_log: Path) -> Callable[..., str]:
    """The Nix text declaring the shell provider as ``providers.notes``."""

    def declare() -> str:
        return (
            f'providers.notes = {{ executable = "{NOTES_PROVIDER}"; args = [ "{notes_log}" ];'
            ' resourceTypes = [ "note" ]; };'
        )

    return declare


def assert_clean_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A user's mistake: non-zero exit, the expected words on stderr, and no Python traceback."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, f"{needle!r} not in stderr:\n{done.stderr}"


def wait_until(
    condition: Callable[[], object], what: str, *, timeout: float = 60, alive: Callable[[], bool] | None = None
) -> Any:
    """Wait for ``condition()`` to be truthy (returned), checking every 50 ms, failing after ``timeout`` s."""
    import threading
    import time

    tick = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert alive is None or alive(), f"a process died while waiting: {what}"
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        tick.wait(0.05)


def nixops4_local() -> Path:
    """NixOps4's own local provider (``memo``, ``file``, ...; no destroy, no read), from ../shared/reference; the
    test is skipped where it is absent or does not run on this machine."""
    binary = ROOT.parent / "shared" / "reference" / "nixops4" / "bin" / "nixops4-resources-local"
    if not os.access(binary, os.X_OK):
        pytest.skip(f"NixOps4's local provider is not at {binary} (CI has ../shared beside the clone)")
    probe = subprocess.run([str(binary)], input="", capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"NixOps4's local provider does not run here: exit {probe.returncode} {probe.stderr[-200:]!r}")
    return binary


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    """A Git server on loopback serving ``tmp_path/served`` (stopped after the test)."""
    from gitserver import GitServer  # (gitserver imports this module)

    base = tmp_path / "served"
    base.mkdir()
    srv = GitServer(base)
    srv.start()
    yield srv
    srv.stop()
