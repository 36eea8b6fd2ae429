"""Push-to-applied latency: a one-resource change pushed to a local remote, the controller polling every second.

    python bench/latency.py [--pushes 10] [--interval 1s]

Prints each latency (push returned -> the remote state branch names the commit) and their median and maximum.
With --webhook the controller polls only hourly and a webhook signed as GitHub signs it follows each push.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "init.defaultBranch=main"]
DEPLOYMENT = (
    '{ members, providers, ... }: { members.m = { type = providers.local.memo; inputs.initialize_with = "V"; }; }'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sh(*argv: str, cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--webhook", action="store_true", help="poll hourly; a signed webhook after each push")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sh(*GIT, "init", "-q", "--bare", "remote.git", cwd=root)
        sh(*GIT, "clone", "-q", "remote.git", "clone", cwd=root)
        clone = root / "clone"
        config = root / "nixgitops.toml"
        port = free_port()
        config.write_text(
            f'[controller]\ndata_dir = "{root / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
            f'[deployments.b]\nrepository = "{root / "remote.git"}"\n'
            f'interval = "{"1h" if args.webhook else args.interval}"\njitter = "1ms"\n'
            f'[receivers.hook]\nkind = "github"\nsecret_file = "{root / "secret"}"\ndeployments = ["b"]\n'
        )
        (root / "secret").write_text("bench-secret")

        def push(value: int) -> tuple[str, float]:
            (clone / "deployment.nix").write_text(DEPLOYMENT.replace("V", str(value)))
            sh(*GIT, "add", "-A", cwd=clone)
            sh(*GIT, "commit", "-qm", f"v{value}", cwd=clone)
            sh(*GIT, "push", "-q", "origin", "main", cwd=clone)
            sha, pushed = sh("git", "rev-parse", "HEAD", cwd=clone).strip(), time.perf_counter()
            if args.webhook and value:
                notify(sha)
            return sha, pushed

        def notify(sha: str) -> None:
            repository = {"clone_url": str(root / "remote.git")}
            body = json.dumps({"ref": "refs/heads/main", "after": sha, "repository": repository}).encode()
            signature = "sha256=" + hmac.new(b"bench-secret", body, hashlib.sha256).hexdigest()
            headers = {"X-Hub-Signature-256": signature, "X-GitHub-Event": "push", "X-GitHub-Delivery": sha}
            request = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/hook", data=body, headers=headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()

        def applied(sha: str) -> bool:
            done = subprocess.run(
                ["git", "--git-dir", str(root / "remote.git"), "log", "-1", "--format=%B", "nixgitops/state"],
                capture_output=True,
                text=True,
                check=False,
            )
            return f"Source-Commit: {sha}" in done.stdout

        sha, _ = push(0)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(config)],
            stderr=subprocess.DEVNULL,
            env={**os.environ},
        )
        try:
            deadline = time.monotonic() + 60
            while not applied(sha) and time.monotonic() < deadline:
                time.sleep(0.01)
            latencies = []
            for i in range(1, args.pushes + 1):
                sha, pushed = push(i)
                deadline = time.monotonic() + 60
                while not applied(sha) and time.monotonic() < deadline:
                    time.sleep(0.01)
                latencies.append(time.perf_counter() - pushed)
                print(f"push {i}: applied after {latencies[-1]:.3f} s")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
    mode = "GitHub-signed push webhook (polling hourly)" if args.webhook else f"polling every {args.interval}"
    print(
        f"{mode}: median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s over {len(latencies)} pushes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
