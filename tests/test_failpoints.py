"""Crash at each narrow step of a run, on purpose: the daemon kills itself (kill -9) at a named failpoint, is
started again, and finishes the run with nothing created twice and nothing forgotten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git, wait_until
from ledger_world import World

from controller.failpoints import POINTS


def daemon(world: World, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(world.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )


def last_state_message(world: World) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(world.remote), "log", "-1", "--format=%B", "nixgitops/state"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout


@pytest.mark.parametrize("point", POINTS)
def test_the_daemon_killed_at_a_failpoint_finishes_after_a_restart(tmp_path: Path, point: str) -> None:
    world = World.create(tmp_path, n=12, extra_config='interval = "1h"\n')
    # the provider points die at their fifth call, mid-run; the others at their first passage
    armed = f"{point}:5" if point.startswith("provider") else point
    first = daemon(world, {"NIXGITOPS_FAILPOINT": armed})
    try:
        assert first.wait(timeout=120) == -9, f"the daemon did not die at {point}"
    finally:
        if first.poll() is None:
            first.kill()
    head = git(world.work, "rev-parse", "HEAD").strip()
    second = daemon(world, {})
    status_file = world.root / "data" / "status" / "web.json"

    def finished() -> bool:
        try:
            last = json.loads(status_file.read_text()).get("lastRun") or {}
        except (OSError, ValueError):
            return False
        return last.get("source_commit") == head and last.get("outcome") in ("success", "no-change")

    try:
        wait_until(finished, timeout=120, what=f"the restarted daemon to finish the run interrupted at {point}")
    finally:
        second.terminate()
        second.wait(timeout=60)
    assert world.books() == []
    assert f"Source-Commit: {head}" in last_state_message(world)
    assert not json.loads(status_file.read_text()).get("stalled"), "a lost record of a push is not a conflict"
    assert not world.journal.exists() or world.journal.read_text().strip() == "", "the journal is settled"
