"""A real Prometheus on loopback scrapes the controller and sees a successful reconcile."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import git, wait_until
from gitserver import free_port

DEPLOYMENT = (
    "{ members, providers, ... }: { members.m = { type = providers.local.memo; inputs.initialize_with = 1; }; }"
)


def query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.loads(response.read())["data"]["result"])
    except OSError:
        return []


def test_prometheus_scrapes_a_successful_reconcile(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed (make test installs Debian's prometheus package)")
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "deployment.nix").write_text(DEPLOYMENT)
    git(work, "add", "-A")
    git(work, "commit", "-qm", "one")
    git(work, "push", "-q", str(remote), "main")
    port, prom_port = free_port(), free_port()
    config = tmp_path / "nixgitops.toml"
    config.write_text(
        f'[controller]\ndata_dir = "{tmp_path / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[deployments.web]\nrepository = "{remote}"\ninterval = "1s"\n'
    )
    scrape = tmp_path / "prometheus.yml"
    scrape.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: nixgitops\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={scrape}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found = wait_until(
            lambda: query(prom_port, 'nixgitops_reconcile_total{deployment="web",result="success"}'),
            "Prometheus sees a successful reconcile",
            timeout=90,
            alive=lambda: daemon.poll() is None and server.poll() is None,
        )
        assert found[0]["metric"]["job"] == "nixgitops"  # type: ignore[index]
        # A pushed commit: Prometheus sees the reconcile that applies it.
        (work / "deployment.nix").write_text(DEPLOYMENT.replace("initialize_with = 1", "initialize_with = 2"))
        git(work, "commit", "-qam", "two")
        git(work, "push", "-q", str(remote), "main")
        promql = 'sum(nixgitops_resource_operations_total{deployment="web",operation="update",result="ok"})'
        wait_until(lambda: query(prom_port, promql), "Prometheus sees the pushed commit's reconcile", timeout=90)
        assert query(prom_port, "nixgitops_resources")[0]["value"][1] == "1"  # type: ignore[index]
    finally:
        for proc in (server, daemon):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
