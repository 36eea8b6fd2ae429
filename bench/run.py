"""Benchmarks: print figures, pass or fail nothing (issue 7 builds the full set on top of this).

For each size and shape it builds a deployment of `local.memo` resources in a fresh Git repository and times,
against the floor of a bare `nix-instantiate` of an equivalent expression in the same run:
the first plan, the first apply, and a plan with nothing to do.

    python bench/run.py [--sizes 10,100,1000] [--shapes independent,chained]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]


def deployment(n: int, shape: str) -> str:
    lines = ["{ members, providers, ... }:", "{"]
    for i in range(n):
        value = f'"v{i}"' if shape == "independent" or i == 0 else f"members.r{i - 1}.outputs.value"
        lines.append(f"  members.r{i} = {{ type = providers.local.memo; inputs.initialize_with = {value}; }};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def floor(n: int) -> str:
    body = " ".join(f'r{i} = {{ type = "local.memo"; inputs.initialize_with = "v{i}"; }};' for i in range(n))
    return "{ " + body + " }\n"


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--shapes", default="independent,chained")
    args = parser.parse_args()
    nixgitops = [sys.executable, "-m", "controller"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(subprocess.run(["nix-instantiate", "--version"], capture_output=True, text=True).stdout.strip())
    print(f"{'shape':<12}{'n':>7}{'floor s':>10}{'plan s':>10}{'apply s':>10}{'noop plan s':>13}{'noop/floor':>12}")
    for shape in args.shapes.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                repo = Path(tmp)
                subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
                (repo / "deployment.nix").write_text(deployment(n, shape))
                (repo / "floor.nix").write_text(floor(n))
                subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
                subprocess.run([*GIT, "commit", "-qm", "bench"], cwd=repo, check=True)
                bare = timed(["nix-instantiate", "--eval", "--strict", "--json", "floor.nix"], repo)
                plan = timed([*nixgitops, "plan", "--json"], repo)
                apply = timed([*nixgitops, "apply", "--yes", "-q"], repo)
                noop = timed([*nixgitops, "plan", "--json"], repo)
                print(f"{shape:<12}{n:>7}{bare:>10.3f}{plan:>10.3f}{apply:>10.3f}{noop:>13.3f}{noop / bare:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
