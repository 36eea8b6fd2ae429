"""Nothing is lost on a crash: kill -9 at many points of an apply, then finish it, and check the books.

The ledger provider refuses to create a name that exists, so creating a resource twice fails the final run,
and every object it made is a file: after the final run, the files and the state must match one to one.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import ROOT, Checkout
from ledger_world import World

LEDGER = ROOT / "tests" / "providers" / "ledger.sh"
KILLS = 30


def deployment(objects: Path, n: int = 30) -> str:
    lines = [
        "{ members, providers, ... }: {",
        f'  providers.ledger = {{ executable = "{LEDGER}"; args = [ "{objects}" ]; resourceTypes = [ "entry" ]; }};',
    ]
    for i in range(n):
        # Every third entry reads the previous one's id, so the run has several levels.
        extra = f"; after = members.e{i - 1}.outputs.id" if i % 3 == 2 else ""
        lines.append(f'  members.e{i} = {{ type = providers.ledger.entry; inputs = {{ name = "e{i}"{extra}; }}; }};')
    lines.append("}")
    return "\n".join(lines)


def test_kill_9_at_random_points_then_finish(checkout: Checkout, tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    checkout.deploy(deployment(objects))
    rng = random.Random(20261125)
    kills = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "apply", "--yes", "--parallelism", "3", "-q"],
            cwd=checkout.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        stop_after = rng.randint(1, 10)  # a progress line to kill at: a point of the run, not a time
        progress = 0
        for line in proc.stdout:
            progress += ": Creat" in line or ": Recovered" in line
            if progress >= stop_after:
                break
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        proc.stdout.close()
    final = checkout.run("apply", "--yes")
    assert final.returncode == 0, final.stdout + final.stderr
    state = checkout.state()
    files = {p.name: p.read_text() for p in objects.iterdir() if p.name != "LEDGER" and not p.name.startswith(".")}
    assert set(state) == {f"e{i}" for i in range(30)}
    assert files == {path: resource["outputs"]["id"] for path, resource in state.items()}
    created = [line.split()[0] for line in (objects / "LEDGER").read_text().splitlines()]
    assert sorted(created) == sorted(files), "each object was created exactly once"
    assert {c["action"] for c in checkout.plan().values()} == {"noop"}
    print(json.dumps({"kills": kills}))
    assert kills >= 10, "most runs must have been killed mid-way for the test to mean something"


def test_kill_9_during_reconciles_then_restart(tmp_path: Path) -> None:
    """The controller's own path: fetch, apply, state commit and push, killed when the journal has grown."""
    world = World.create(tmp_path)
    rng = random.Random(7)
    kills = 0
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "reconcile", "web", "--config", str(world.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        lines = rng.randint(1, 12)  # kill once the journal holds this many lines: a point of the run, not a time
        while proc.poll() is None:
            if world.journal.exists() and world.journal.read_text().count("\n") >= lines:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            threading.Event().wait(0.005)
        proc.wait(timeout=60)
    world.push_newer()
    final = world.reconcile()
    assert final.returncode == 0, final.stdout + final.stderr
    assert world.books() == []
    print(json.dumps({"reconcile_kills": kills}))
    assert kills >= 10
