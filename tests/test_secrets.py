"""Secrets never leave: git credentials (in remote URLs), webhook secrets and the API token are looked for in
everything the controller writes or serves (its log, metrics, every API answer, the data directory, the state
branch) after a daemon has fetched, applied, pushed, failed to authenticate and received good and bad webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from conftest import git, wait_until
from githttp import GitHttpServer
from gitserver import free_port

PASSWORD = "git-password-5c9b"
WRONG = "wrong-password-e2d4"
WEBHOOK = "webhook-secret-77aa"
TOKEN = "api-token-31fe"
SECRETS = (PASSWORD, WRONG, WEBHOOK, TOKEN)
DEPLOYMENT = (
    '{ members, providers, ... }: { members.m = { type = providers.local.memo; inputs.initialize_with = "V"; }; }'
)


def test_no_secret_appears_anywhere(tmp_path: Path) -> None:
    base = tmp_path / "server"
    base.mkdir()
    git(base, "init", "-q", "--bare", "-b", "main", "infra.git")
    server = GitHttpServer(base, "deploy", PASSWORD)
    server.start()
    try:
        work = tmp_path / "work"
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        (work / "deployment.nix").write_text(DEPLOYMENT.replace("V", "one"))
        git(work, "add", "-A")
        git(work, "commit", "-qm", "one")
        git(work, "push", "-q", server.url("infra.git"), "main")
        (tmp_path / "hook-secret").write_text(WEBHOOK + "\n")
        (tmp_path / "token").write_text(TOKEN + "\n")
        port = free_port()
        good = server.url("infra.git")
        bad = good.replace(PASSWORD, WRONG)
        config = tmp_path / "nixgitops.toml"
        config.write_text(
            f'[controller]\ndata_dir = "{tmp_path / "data"}"\n'
            f'[server]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "token"}"\n'
            f'[deployments.web]\nrepository = "{good}"\ninterval = "1h"\n'
            f'[deployments.locked]\nrepository = "{bad}"\ninterval = "1h"\n'
            f'[receivers.gh]\nkind = "github"\nsecret_file = "{tmp_path / "hook-secret"}"\ndeployments = ["web"]\n'
        )
        log = (tmp_path / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(config)], stdout=log, stderr=log
        )
        api = f"http://127.0.0.1:{port}"

        def call(
            path: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
        ) -> str:
            request = urllib.request.Request(api + path, data=body, method=method, headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.read().decode()

        auth = {"Authorization": f"Bearer {TOKEN}"}
        try:

            def up() -> bool:
                try:
                    return "ok" in call("/healthz")
                except OSError:
                    return False

            wait_until(up, "the daemon's server", timeout=60, alive=lambda: daemon.poll() is None)
            seen: list[str] = [call("/api/v1/deployments/web/reconcile?wait=true", "POST", headers=auth)]
            seen.append(call("/api/v1/deployments/locked/reconcile?wait=true", "POST", headers=auth))
            (work / "deployment.nix").write_text(DEPLOYMENT.replace("V", "two"))
            git(work, "commit", "-qam", "two")
            git(work, "push", "-q", good, "main")
            head = git(work, "rev-parse", "HEAD").strip()
            payload = json.dumps({"ref": "refs/heads/main", "after": head, "repository": {"clone_url": good}}).encode()
            signature = "sha256=" + hmac.new(WEBHOOK.encode(), payload, hashlib.sha256).hexdigest()
            for sig in (signature, "sha256=" + "0" * 64):
                hook = {"X-Hub-Signature-256": sig, "X-GitHub-Event": "push", "X-GitHub-Delivery": sig[-8:]}
                seen.append(call("/hooks/gh", "POST", payload, hook))
            wait_until(
                lambda: (
                    head in call("/api/v1/deployments/web", headers=auth)
                    and '"success"' in call("/api/v1/deployments/web", headers=auth)
                ),
                "the webhook's commit to be applied",
                timeout=60,
            )
            for path in (
                "/api/v1/deployments",
                "/api/v1/deployments/web",
                "/api/v1/deployments/locked",
                "/api/v1/deployments/web/runs",
                "/api/v1/deployments/locked/runs",
                "/api/v1/deployments/web/plan",
                "/api/v1/deployments/web/resources",
                "/openapi.json",
                "/metrics",
                "/readyz",
            ):
                seen.append(call(path, headers=auth))
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
            log.close()
    finally:
        server.stop()

    places = {"the daemon's log": (tmp_path / "daemon.log").read_text(), "the HTTP answers": "\n".join(seen)}
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and not path.is_symlink():
            places[f"data file {path.relative_to(tmp_path)}"] = path.read_bytes().decode(errors="replace")
    state = base / "infra.git"
    places["the state branch"] = git(state, "log", "-p", "--format=%B", "nixgitops/state")
    places["status"] = subprocess.run(
        [sys.executable, "-m", "controller", "status", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for where, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} found in {where}"
    # the places looked at are the right ones: they hold what the runs did
    assert f"127.0.0.1:{server.port}/infra.git" in places["status"], "repositories are shown, without credentials"
    assert "Source-Commit: " + head in places["the state branch"]
    assert "nixgitops_reconcile_total" in places["the HTTP answers"]
    assert "locked" in places["the daemon's log"] and "unavailable" in places["the daemon's log"]
