"""Alert rules and the Grafana dashboard: valid PromQL, only metrics the controller exports, rule unit tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from controller.metrics import Metrics

FILES = ROOT / "charts" / "nixgitops" / "files"
METRIC = re.compile(r"\b(nixgitops_[a-z_]+)")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus package)")
    return found


def exported() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
            names.add(family.name + suffix)
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((FILES / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_alert_rules_check_and_pass_their_unit_tests() -> None:
    tool = promtool()
    for argv in ([tool, "check", "rules", str(FILES / "alerts.yaml")], [tool, "test", "rules", "alerts_test.yaml"]):
        done = subprocess.run(argv, cwd=ROOT / "tests" / "rules", capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    tool = promtool()
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):
            expr = re.sub(r"^label_values\(([a-z_]+), [a-z_]+\)$", r"\1", expr)
        expr = expr.replace("$__rate_interval", "5m").replace('"$deployment"', '".*"')
        rules.append({"record": f"dashboard:panel_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    text = (FILES / "alerts.yaml").read_text() + "\n".join(dashboard_exprs())
    used = set(METRIC.findall(text))
    assert used, "the files should use nixgitops metrics"
    assert used <= exported(), f"not exported: {sorted(used - exported())}"


def test_every_panel_of_the_issue_is_there() -> None:
    text = "\n".join(dashboard_exprs())
    for metric in (
        "nixgitops_reconcile_total",
        "nixgitops_reconcile_duration_seconds_bucket",
        "nixgitops_plan_changes",
        "nixgitops_resources",
        "nixgitops_webhook_requests_total",
        "nixgitops_applied_commit_info",
    ):
        assert metric in text, metric
