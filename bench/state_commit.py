"""State commit cost: recording a one-resource change in a deployment of 10 resources vs 10,000.

python bench/state_commit.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from controller.model import ResourceState
from controller.state_branch import StateBranch, open_repository


def resource(i: int, value: int = 0) -> ResourceState:
    return ResourceState(f"r{i}", "local.memo", {"initialize_with": value}, {"value": value})


def measure(n: int, repeat: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["git", "init", "-q", tmp], check=True)
        store = StateBranch(open_repository(Path(tmp)))
        store.commit(upserts={f"r{i}": resource(i) for i in range(n)}, deletes=(), meta={}, message="all")
        times = []
        for k in range(1, repeat + 1):
            started = time.perf_counter()
            store.commit(upserts={"r0": resource(0, k)}, deletes=(), meta={"run": k}, message=f"change {k}")
            times.append(time.perf_counter() - started)
        return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    small, large = measure(10, args.repeat), measure(10_000, args.repeat)
    print(
        f"one-resource state commit, median of {args.repeat}: 10 resources {small * 1000:.2f} ms,"
        f" 10,000 resources {large * 1000:.2f} ms, ratio {large / small:.1f} (target <= 5)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
