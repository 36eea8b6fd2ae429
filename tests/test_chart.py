"""The Helm chart, with a real helm: lint, render with several values files, validate against Kubernetes schemas."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

CHART = ROOT / "charts" / "nixgitops"
VALUES = sorted((ROOT / "tests" / "helm").glob("*.yaml"))
CUSTOM_RESOURCES = {"ServiceMonitor", "PrometheusRule"}


def helm() -> str:
    local = ROOT / ".tools" / "helm"
    found = str(local) if local.exists() else shutil.which("helm")
    if found is None:
        pytest.skip("helm is not installed (make test fetches it into .tools/)")
    return found


def render(values: Path, *extra: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [helm(), "template", "demo", str(CHART), "-f", str(values), *extra], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_lint(values: Path) -> None:
    done = subprocess.run([helm(), "lint", "--strict", str(CHART), "-f", str(values)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_rendered_manifests_are_valid_kubernetes(values: Path) -> None:
    version = kubernetes_validate.latest_version()
    docs = render(values)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds
    for doc in docs:
        if doc["kind"] not in CUSTOM_RESOURCES:
            kubernetes_validate.validate(doc, version, strict=True)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_the_full_values_render_what_production_needs() -> None:
    docs = render(ROOT / "tests" / "helm" / "full.yaml")
    deployment = by_kind(docs, "Deployment")[0]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/nixgitops/git", "/etc/nixgitops/webhooks/gh", "/var/lib/nixgitops", "/tmp"} <= mounts
    assert any(v.get("persistentVolumeClaim") for v in pod["volumes"])
    ingress = by_kind(docs, "Ingress")[0]
    assert [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]] == ["/hooks/"]
    assert by_kind(docs, "ServiceMonitor") and by_kind(docs, "PrometheusRule")
    rule = by_kind(docs, "PrometheusRule")[0]
    assert {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]} >= {"NixgitopsDeploymentFailing"}
    dashboards = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert dashboards and dashboards[0]["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_rendered_configuration_is_one_the_controller_accepts(tmp_path: Path) -> None:
    from controller.config import parse

    docs = render(ROOT / "tests" / "helm" / "full.yaml")
    config = next(d for d in by_kind(docs, "ConfigMap") if "nixgitops.toml" in d["data"])
    data = tomllib.loads(config["data"]["nixgitops.toml"])
    secret = tmp_path / "secret"
    secret.write_text("s")
    data["receivers"]["gh"]["secret_file"] = str(secret)
    token = tmp_path / "token"
    token.write_text("t")
    data["server"]["token_file"] = str(token)
    parsed = parse(data, Path("nixgitops.toml"))
    assert parsed.deployments["staging"].apply == "plan-only"
    assert parsed.deployments["staging"].drift_interval is None
    assert parsed.deployments["web"].interval == 30 and parsed.deployments["web"].parallelism == 4
    assert parsed.deployments["web"].allow_empty is False and "allow_empty = false" in config["data"]["nixgitops.toml"]
    assert parsed.receivers["gh"].deployments == ("web", "staging")


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("deployments.web.apply=sometimes", "apply"),
        ("deployments.web.interval=soon", "interval"),
        ("deployments.web.allow_empty=maybe", "allow_empty"),
        ("receivers.x.kind=svn", "kind"),
        ("colour=blue", "colour"),
    ],
)
def test_wrong_values_fail_at_install_time(setting: str, needle: str) -> None:
    done = subprocess.run(
        [helm(), "template", "demo", str(CHART), "-f", str(ROOT / "tests" / "helm" / "minimal.yaml"), "--set", setting],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and needle in done.stderr, done.stderr
