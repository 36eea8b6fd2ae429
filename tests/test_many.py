"""Many deployments in one daemon, one of them failing on every run: the others are reconciled as usual, and the
failing one is counted and retried. The long version (50 deployments, latency with and without) is `make soak`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import local_remote, wait_until
from gitserver import free_port
from load import Burst

HEALTHY = 10


def test_one_failing_deployment_does_not_hold_the_others(tmp_path: Path) -> None:
    port = free_port()
    lines = [f'[controller]\ndata_dir = "{tmp_path / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n']
    for i in range(HEALTHY):
        remote = local_remote(tmp_path, f"d{i}")
        lines.append(f'[deployments.d{i}]\nrepository = "{remote}"\ninterval = "1h"\n')
    lines.append(f'[deployments.broken]\nrepository = "{tmp_path / "missing.git"}"\ninterval = "1s"\njitter = "1ms"\n')
    config = tmp_path / "nixgitops.toml"
    config.write_text("\n".join(lines))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    burst = Burst(f"http://127.0.0.1:{port}")
    try:
        wait_until(burst.healthy, "the daemon's server", timeout=60, alive=lambda: daemon.poll() is None)
        wait_until(lambda: burst.runs("broken") >= 2, "the broken deployment to fail twice", timeout=60)
        outcomes = []
        for i in range(HEALTHY):
            answer = burst.request("POST", f"/api/v1/deployments/d{i}/reconcile?wait=true", b"", {})[1]
            outcomes.append(json.loads(answer)["outcome"])
        broken = json.loads(burst.get("/api/v1/deployments/broken"))
        metrics = burst.get("/metrics")
        burst.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    assert set(outcomes) <= {"success", "no-change"}, outcomes
    assert broken["lastRun"]["outcome"] == "unavailable" and "missing.git" in broken["lastRun"]["message"]
    assert 'nixgitops_reconcile_total{deployment="broken",result="unavailable"}' in metrics
