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
    assert "/etc/nixgitops/age/web" in mounts
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
    data["forges"]["hub"]["token_file"] = str(token)
    assert data["deployments"]["web"]["encryption"]["identity_file"] == "/etc/nixgitops/age/web/identity.txt"
    data["deployments"]["web"]["encryption"]["identity_file"] = str(secret)
    parsed = parse(data, Path("nixgitops.toml"))
    assert parsed.deployments["web"].encryption.enforced is True
    assert parsed.deployments["web"].encryption.recipients[0].startswith("age1")
    assert parsed.forges["hub"].kind == "github" and parsed.deployments["web"].previews is True
    assert parsed.deployments["web"].forge == "hub"
    assert parsed.deployments["staging"].apply == "plan-only"
    assert parsed.deployments["staging"].drift_interval is None
    assert parsed.deployments["web"].interval == 30 and parsed.deployments["web"].parallelism == 4
    assert parsed.deployments["web"].allow_empty is False and "allow_empty = false" in config["data"]["nixgitops.toml"]
    assert parsed.receivers["gh"].deployments == ("web", "staging")


def nix_conf(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The settings of the rendered nix.conf, one per name, the last line winning as in Nix."""
    config = next(d for d in by_kind(docs, "ConfigMap") if "nix.conf" in d["data"])
    lines = [line.strip() for line in config["data"]["nix.conf"].splitlines()]
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines if line and line[0] != "#")}


def volume_at(pod: dict[str, Any], path: str) -> dict[str, Any]:
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == path)
    return next(v for v in pod["volumes"] if v["name"] == mount["name"])


def test_the_nix_values_render_into_the_nix_conf_nix_reads() -> None:
    docs = render(ROOT / "tests" / "helm" / "full.yaml")
    conf = nix_conf(docs)
    assert conf["substituters"] == "https://cache.example.org https://cache.nixos.org"
    assert conf["trusted-public-keys"].split() == [
        "cache.example.org-1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=",
        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
    ]
    assert conf["max-jobs"] == "2" and conf["connect-timeout"] == "2"  # extra config, overriding the chart's 5
    assert conf["build-users-group"] == "" and conf["sandbox"] == "false"
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    nix_conf_volume = volume_at(pod, env["NIX_CONF_DIR"])
    assert nix_conf_volume["configMap"]["name"].endswith("-nix")
    assert "checksum/nix-conf" in by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]


def test_the_store_is_mounted_at_nix_from_a_volume_of_its_own() -> None:
    docs = render(ROOT / "tests" / "helm" / "full.yaml")
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    claim = volume_at(pod, "/nix")["persistentVolumeClaim"]["claimName"]
    store = next(d for d in by_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == claim)
    assert store["spec"]["resources"]["requests"]["storage"] == "40Gi" and store["spec"]["storageClassName"] == "fast"
    assert claim != volume_at(pod, "/var/lib/nixgitops")["persistentVolumeClaim"]["claimName"]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["fsGroup"] == 10001
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_by_default_the_store_persists_and_the_public_cache_is_trusted() -> None:
    docs = render(ROOT / "tests" / "helm" / "minimal.yaml")
    conf = nix_conf(docs)
    assert conf["substituters"] == "https://cache.nixos.org"
    assert conf["trusted-public-keys"] == "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
    assert conf["connect-timeout"] == "5"
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    claim = volume_at(pod, "/nix")["persistentVolumeClaim"]["claimName"]
    (store,) = (d for d in by_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == claim)
    assert store["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert volume_at(pod, "/var/lib/nixgitops") == {"name": "data", "emptyDir": {}}


def test_an_air_gapped_install_has_no_substituter_and_uses_the_claim_it_names() -> None:
    docs = render(ROOT / "tests" / "helm" / "airgapped.yaml")
    conf = nix_conf(docs)
    assert conf["substituters"] == "" and conf["trusted-public-keys"] == ""
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert volume_at(pod, "/nix")["persistentVolumeClaim"] == {"claimName": "nixgitops-store"}
    assert not by_kind(docs, "PersistentVolumeClaim")


def test_without_store_persistence_the_store_is_an_empty_dir() -> None:
    docs = render(ROOT / "tests" / "helm" / "minimal.yaml", "--set", "store.persistence.enabled=false")
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert volume_at(pod, "/nix") == {"name": "store", "emptyDir": {}}
    assert not by_kind(docs, "PersistentVolumeClaim")


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_no_values_file_renders_the_dummy_store(values: Path) -> None:
    docs = render(values)
    assert "dummy://" not in yaml.safe_dump_all(docs)
    env = {e["name"] for e in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "NIXGITOPS_NIX_STORE" not in env


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("deployments.web.apply=sometimes", "apply"),
        ("deployments.web.interval=soon", "interval"),
        ("deployments.web.allow_empty=maybe", "allow_empty"),
        ("receivers.x.kind=svn", "kind"),
        ("colour=blue", "colour"),
        ("nix.substitutes={https://cache.example.org}", "substitutes"),
        ("nix.substituters={https://a.example.org https://b.example.org}", "substituters"),
        ("nix.trustedPublicKeys={nokey}", "trustedPublicKeys"),
        ("store.persistence.size=big", "size"),
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
