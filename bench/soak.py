"""The long reliability campaign (`make soak`): the short versions of each part run in `make test`.

    python bench/soak.py [--crash-trials 100] [--rate 200] [--load-seconds 60] [--deployments 50]

1. crash: the daemon applies a new generation of 30 ledger entries (30 deletes, 30 creates) and is killed (kill -9)
   at a random failpoint or a random moment; it is started again and must finish: the run succeeds (the ledger
   provider refuses to create a name twice), and the objects, the pushed state and the generation agree.
2. load: signed and unsigned webhooks at a fixed rate while the reconciles they trigger run: every request is
   answered, p50/p99 latency, how many runs the triggers became, the daemon's memory before and after.
3. many deployments: reconcile latency of the healthy deployments, without and with one that fails on every run.

Prints a Markdown table for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import local_remote, wait_until  # noqa: E402 - after the path set-up above
from gitserver import free_port  # noqa: E402
from ledger_world import World  # noqa: E402
from load import Burst, rss_mb  # noqa: E402

from controller.failpoints import POINTS  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []


def row(what: str, trials: str, outcome: str, lost: str) -> None:
    ROWS.append((what, trials, outcome, lost))
    print(f"  {what} | {trials} | {outcome} | {lost}", flush=True)


def daemon(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def crash(trials: int, tmp: Path) -> None:
    world = World.create(tmp / "crash", n=30, extra_config='interval = "1h"\n')
    status = world.root / "data" / "status" / "web.json"
    rng = random.Random(20261125)
    kills = {"failpoint": 0, "moment": 0}
    failures: list[str] = []

    def finished(head: str) -> bool:
        try:
            last = json.loads(status.read_text()).get("lastRun") or {}
        except (OSError, ValueError):
            return False
        if last.get("source_commit") == head and last.get("outcome") not in ("success", "no-change", "running"):
            raise AssertionError(f"the run after the restart ended {last.get('outcome')}: {last.get('message')}")
        return last.get("source_commit") == head and last.get("outcome") in ("success", "no-change")

    for trial in range(trials):
        prefix = f"g{trial % 3}e"
        head = world.push_generation(prefix)
        if rng.random() < 0.5:
            point = rng.choice(POINTS)
            nth = rng.randint(1, 40) if point.startswith("provider") else 1
            proc = daemon(world.config, {"NIXGITOPS_FAILPOINT": f"{point}:{nth}"})
            how = "failpoint"
        else:
            proc = daemon(world.config)
            how = "moment"
            threading_wait(rng.uniform(0.3, 2.5))
            proc.send_signal(signal.SIGKILL)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kills[how] += proc.returncode == -9
        again = daemon(world.config)
        try:
            wait_until(partial(finished, head), f"trial {trial}: the restarted daemon to finish", timeout=120)
        except AssertionError as exc:
            failures.append(f"trial {trial}: {exc}")
        finally:
            stop(again)
        problems = world.books(prefix)
        if problems:
            failures.append(f"trial {trial}: {problems}")
        print(f"    trial {trial + 1}/{trials}: {how}, {problems or 'ok'}", flush=True)
    total = kills["failpoint"] + kills["moment"]
    row(
        "daemon killed (kill -9) during a run of 30 deletes and 30 creates, then restarted",
        f"{trials} runs, {total} killed ({kills['failpoint']} at failpoints, {kills['moment']} at random moments)",
        "every run finished after the restart" if not failures else f"{len(failures)} FAILED: {failures[:3]}",
        "none" if not failures else "SEE FAILURES",
    )


def threading_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)  # the moment of a kill: chosen at random, not a synchronisation


def load(rate: float, seconds: float, tmp: Path) -> None:
    root = tmp / "load"
    root.mkdir()
    remote = local_remote(root, "web")
    (root / "secret").write_bytes(b"soak-secret")
    port = free_port()
    config = root / "nixgitops.toml"
    config.write_text(
        f'[controller]\ndata_dir = "{root / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[deployments.web]\nrepository = "{remote}"\ninterval = "1h"\n'
        f'[receivers.gh]\nkind = "github"\nsecret_file = "{root / "secret"}"\ndeployments = ["web"]\n'
    )
    proc = daemon(config)
    try:
        burst = Burst(f"http://127.0.0.1:{port}")
        wait_until(burst.healthy, "the daemon's server", timeout=60)
        body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40, "repository": {"clone_url": str(remote)}})
        signature = "sha256=" + hmac.new(b"soak-secret", body.encode(), hashlib.sha256).hexdigest()
        signed = {"X-Hub-Signature-256": signature, "X-GitHub-Event": "push"}
        unsigned = {"X-Hub-Signature-256": "sha256=" + "0" * 64, "X-GitHub-Event": "push"}
        before = rss_mb(proc.pid)
        result = burst.run("/hooks/gh", body.encode(), [signed, unsigned], rate=rate, seconds=seconds)
        after = rss_mb(proc.pid)
        runs = burst.runs("web")
        burst.request("POST", "/api/v1/deployments/web/reconcile?wait=true", b"", {})
        owed = burst.runs("web") - runs
        burst.close()
    finally:
        stop(proc)
    answered = sum(result.statuses.values())
    row(
        f"{rate:g} webhook requests/s for {seconds:g} s (half signed), reconciles running",
        f"{result.sent} requests",
        f"{answered} answered ({dict(result.statuses)}), {len(result.errors)} errors; p50 {result.p50_ms:.1f} ms,"
        f" p99 {result.p99_ms:.1f} ms; {result.statuses.get(202, 0)} triggers became {runs} runs, {owed} more after"
        f" the burst (no queue); RSS {before:.0f} -> {after:.0f} MB",
        "none",
    )


def started_all(burst: Burst) -> bool:
    """Whether every deployment but the broken one has finished its first run (the daemon runs each at start)."""
    rows = json.loads(burst.get("/api/v1/deployments"))
    return all((r.get("lastRun") or {}).get("outcome") for r in rows if r["deployment"] != "broken")


def many(deployments: int, tmp: Path) -> None:
    root = tmp / "many"
    root.mkdir()
    port = free_port()
    lines = [f'[controller]\ndata_dir = "{root / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n']
    for i in range(deployments - 1):
        remote = local_remote(root, f"d{i}")
        lines.append(f'[deployments.d{i}]\nrepository = "{remote}"\ninterval = "1h"\n')
    healthy = "\n".join(lines)
    failing = f'[deployments.broken]\nrepository = "{root / "missing.git"}"\ninterval = "1s"\njitter = "1ms"\n'
    figures = {}
    for label, text in (("without", healthy), ("with", healthy + failing)):
        config = root / f"{label}.toml"
        config.write_text(text)
        proc = daemon(config)
        try:
            burst = Burst(f"http://127.0.0.1:{port}")
            wait_until(burst.healthy, "the daemon's server", timeout=60)

            wait_until(partial(started_all, burst), "the first run of every deployment", timeout=300)
            latencies = []
            for _ in range(3):
                for i in range(deployments - 1):
                    started = time.perf_counter()
                    answer = json.loads(
                        burst.request("POST", f"/api/v1/deployments/d{i}/reconcile?wait=true", b"", {})[1]
                    )
                    latencies.append(time.perf_counter() - started)
                    assert answer.get("outcome") in ("success", "no-change"), answer
            failures = burst.runs("broken") if label == "with" else 0
            burst.close()
        finally:
            stop(proc)
        latencies.sort()
        figures[label] = (statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))], failures)
    (w50, w99, _), (f50, f99, failed) = figures["without"], figures["with"]
    row(
        f"{deployments} deployments in one daemon, one failing on every run (interval 1 s)",
        f"{3 * (deployments - 1)} forced reconciles of the others, twice",
        f"reconcile latency without the failing one p50 {w50 * 1000:.0f} ms / p99 {w99 * 1000:.0f} ms; with it"
        f" p50 {f50 * 1000:.0f} ms / p99 {f99 * 1000:.0f} ms ({failed} failed runs meanwhile)",
        "none",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crash-trials", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument("--deployments", type=int, default=50)
    parser.add_argument("--only", default="crash,load,many")
    args = parser.parse_args()
    only = set(args.only.split(","))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nixgitops-soak-") as tmp:
        if "crash" in only:
            crash(args.crash_trials, Path(tmp))
        if "load" in only:
            load(args.rate, args.load_seconds, Path(tmp))
        if "many" in only:
            many(args.deployments, Path(tmp))
    print(f"\nwhole run {time.monotonic() - started:.0f} s\n")
    print("| fault or input | trials | outcome | data lost |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
