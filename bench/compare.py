"""The no-change plan of this tree against another revision's, in the same run, interleaved (the machine is shared
and noisy: alternating the two versions exposes both to the same load). Prints figures; passes or fails nothing.

    python bench/compare.py [--base REV] [--sizes 1000,10000] [--rounds 7]

REV (default: HEAD) is checked out into a temporary worktree; both versions plan the same checkout, whose state
was written by this tree's `apply`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GIT, NIXGITOPS, SHAPES, deployment, git_repo, sh, size_label, timed

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nixgitops-compare-") as name:
        tmp = Path(name)
        base = tmp / "base"
        sh(*GIT, "worktree", "add", "-q", "--detach", str(base), args.base, cwd=ROOT)
        try:
            envs = {
                "base": dict(os.environ, PYTHONPATH=str(base)),
                "this": dict(os.environ, PYTHONPATH=str(ROOT)),
            }
            print(f"base {args.base} = {sh(*GIT, 'rev-parse', '--short', args.base, cwd=ROOT).strip()}; this tree")
            print("| scenario | size | base | this tree | ratio |")
            print("|---|---|---|---|---|")
            for shape in SHAPES:
                for n in [int(s) for s in args.sizes.split(",")]:
                    repo = tmp / f"{shape}-{n}"
                    git_repo(repo, {"deployment.nix": deployment(n, shape, tmp / f"out-{shape}-{n}")})
                    timed([*NIXGITOPS, "apply", "--yes", "-q"], repo, envs["this"])
                    times: dict[str, list[float]] = {"base": [], "this": []}
                    for _ in range(args.rounds):
                        for which in ("base", "this"):
                            times[which].append(timed([*NIXGITOPS, "plan"], repo, envs[which]).seconds)
                    b, t = statistics.median(times["base"]), statistics.median(times["this"])
                    print(f"| plan, no change (CLI) | {size_label(n, shape)} | {b:.3f} s | {t:.3f} s | {t / b:.2f} |")
        finally:
            subprocess.run([*GIT, "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
