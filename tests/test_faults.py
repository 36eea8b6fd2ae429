"""Faults outside the controller, for real: the disk fills during a state commit (a small tmpfs), Nix is missing,
Nix crashes. Each ends in a clear error, counted in the metrics, and nothing recorded is lost: once the fault is
gone, the next run completes with the books in order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_world import World


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs (the controller's data directory goes there): a disk that can be filled in a moment."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the suite runs as root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_the_disk_fills_during_a_state_commit(tmp_path: Path, small_disk: Path) -> None:
    world = World.create(tmp_path / "world", n=12)
    world.config.write_text(world.config.read_text().replace(str(world.root / "data"), str(small_disk / "data")))
    filler = small_disk / "filler"
    full = world.reconcile(env={"NIXGITOPS_FAILPOINT": "state-commit", "NIXGITOPS_FAILPOINT_FILL": str(filler)})
    assert full.returncode == 1, full.stdout + full.stderr
    assert "Traceback" not in full.stderr + full.stdout
    assert "disk is full" in full.stdout + full.stderr or "No space left" in full.stdout + full.stderr, full.stdout
    journal = small_disk / "data" / "journal" / "web.journal"
    assert journal.exists() and journal.read_text().count('"kind":"result"') == 12, "the journal kept every result"
    filler.unlink()
    again = world.reconcile()
    assert again.returncode == 0, again.stdout + again.stderr
    assert world.books() == []


def fake_nix(tmp_path: Path, body: str) -> dict[str, str]:
    """A PATH whose nix-instantiate and nix are ``body`` (a shell script), ahead of the real ones."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("nix-instantiate", "nix"):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("kill -SEGV $$", "Nix crashed (signal 11)"),
        ("echo 'error: something inside Nix broke' >&2; exit 1", "something inside Nix broke"),
    ],
)
def test_nix_that_crashes_is_a_clear_failure_and_the_next_run_recovers(tmp_path: Path, body: str, needle: str) -> None:
    world = World.create(tmp_path / "world", n=3)
    broken = world.reconcile(env=fake_nix(tmp_path, body))
    assert broken.returncode == 1 and "Traceback" not in broken.stdout + broken.stderr
    assert needle in broken.stdout + broken.stderr, broken.stdout + broken.stderr
    status = json.loads((world.root / "data" / "status" / "web.json").read_text())
    assert status["lastRun"]["outcome"] == "evaluation-failed"
    fixed = world.reconcile()
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert world.books() == []


def test_missing_nix_is_named(tmp_path: Path) -> None:
    world = World.create(tmp_path / "world", n=3)
    git = shutil.which("git")
    assert git is not None
    only = tmp_path / "only-git"
    only.mkdir()
    for tool in ("git", "sh"):
        found = shutil.which(tool)
        assert found is not None
        (only / tool).symlink_to(found)
    env = {"PATH": str(only)}
    done = subprocess.run(
        [sys.executable, "-m", "controller", "reconcile", "web", "--config", str(world.config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "apt-get install nix-bin" in done.stdout + done.stderr, done.stdout + done.stderr
