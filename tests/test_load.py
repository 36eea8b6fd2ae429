"""Load on a real daemon: a burst of webhook requests while reconciles run. Every request is answered, the
reconciles they ask for are coalesced (no queue grows), and the daemon's memory stays flat. The long version
(200 requests per second for 60 s, 50 deployments) is `make soak`."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

from conftest import local_remote, wait_until
from gitserver import free_port
from load import Burst, rss_mb

SECRET = b"load-secret"


def test_a_burst_of_webhooks_is_answered_and_coalesced(tmp_path: Path) -> None:
    remote = local_remote(tmp_path, "remote")
    (tmp_path / "secret").write_bytes(SECRET)
    port = free_port()
    config = tmp_path / "nixgitops.toml"
    config.write_text(
        f'[controller]\ndata_dir = "{tmp_path / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[deployments.web]\nrepository = "{remote}"\ninterval = "1h"\n'
        f'[receivers.gh]\nkind = "github"\nsecret_file = "{tmp_path / "secret"}"\ndeployments = ["web"]\n'
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        burst = Burst(f"http://127.0.0.1:{port}")
        wait_until(burst.healthy, "the daemon's server", timeout=60, alive=lambda: daemon.poll() is None)
        body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40, "repository": {"clone_url": str(remote)}})
        signature = "sha256=" + hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()
        signed = {"X-Hub-Signature-256": signature, "X-GitHub-Event": "push"}
        unsigned = {"X-Hub-Signature-256": "sha256=" + "0" * 64, "X-GitHub-Event": "push"}
        before = rss_mb(daemon.pid)
        result = burst.run("/hooks/gh", body.encode(), [signed, unsigned], rate=200, seconds=3)
        after = rss_mb(daemon.pid)
        during = burst.runs("web")
        # a backlog would show now: the run asked for here starts after every run still owed to the burst
        burst.request("POST", "/api/v1/deployments/web/reconcile?wait=true", b"", {})
        later = burst.runs("web")
        burst.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    print(json.dumps({"requests": result.sent, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "runs": during}))
    assert result.errors == [], result.errors[:5]
    assert result.sent >= 500 and result.statuses.keys() <= {202, 401}, result.statuses
    assert result.statuses[401] == result.sent // 2, "every unsigned request is refused"
    triggered = result.statuses[202]
    assert 1 <= during < triggered, f"{during} runs for {triggered} triggers: not coalesced"
    assert later - during <= 3, f"{later - during} runs were still owed to the burst after it ended: a queue grew"
    assert after - before < 40, f"RSS grew from {before:.0f} to {after:.0f} MB during the burst"
