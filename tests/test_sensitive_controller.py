"""The controller never shows a sensitive value: a real daemon applies a deployment whose input is read from a file
on the controller's host and whose provider returns a sensitive output, previews a pull request that changes the
secret on a fake GitHub (tests/fakeforge.py), applies the merge and a failing commit. Its log, every API answer, the
metrics, the forge's comments and statuses, its data directory and every object of the pushed state branch are
searched for the values. The values are sealed to an SSH ed25519 key (as agenix does), and the real `age` tool
decrypts them with that key. And with ``enforced = true`` and no recipients, nothing reaches the provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pygit2
import test_previews as previews
import test_sensitive_leaks as leaks
from conftest import git, wait_until
from fakeforge import FakeGitHub
from gitserver import Developer, GitServer, free_port
from test_previews import pull_request_event, send, states
from test_sensitive_leaks import made

DEPLOYMENT = """{ members, providers, sensitive, ... }: {
  providers.vault = {
    executable = "PYTHON"; args = [ "VAULT" "LOG" ];
    resourceTypes.db = { sensitiveOutputs = [ "password" ]; };
  };
  members.db = {
    type = providers.vault.db;
    inputs = { admin = sensitive (builtins.readFile SECRET_FILE); fail = FAIL; };
  };
  members.app = {
    type = providers.local.memo;
    inputs.initialize_with = let password = members.db.outputs.password; in
      builtins.trace "connecting with ${password}" "password=${password}";
  };
}
"""


def deployment(tmp_path: Path, secret_file: Path, *, fail: bool = False) -> str:
    return leaks.deployment(tmp_path, secret_file, fail=fail, template=DEPLOYMENT)


def ssh_key(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def configure(tmp_path: Path, url: str, forge: FakeGitHub, port: int, encryption: str) -> Path:
    """The configuration of tests/test_previews.py, with drift checks, the secrets' directory allowed and
    ``encryption``."""
    extra = f'allowed_paths = ["{tmp_path / "secrets"}"]\npreviews_decrypt = true\n'
    extra += f"[deployments.web.encryption]\n{encryption}"
    config = previews.configure(tmp_path, url, forge, port, extra)
    config.write_text(config.read_text().replace('drift_interval = "off"', 'drift_interval = "1s"'))
    return config


def call(port: int, path: str, method: str = "GET") -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()


def test_the_controller_never_shows_a_sensitive_value(tmp_path: Path, server: GitServer) -> None:
    (tmp_path / "secrets").mkdir()
    first_file, second_file = tmp_path / "secrets" / "admin", tmp_path / "secrets" / "admin-next"
    first, second = "ctl-admin-" + "7c1e" * 5, "ctl-admin-" + "9a0b" * 5
    first_file.write_text(first)
    second_file.write_text(second)
    values = (first, made(first), second, made(second))
    public = ssh_key(tmp_path / "ops_ed25519")
    (tmp_path / "dev").mkdir()
    dev = Developer(server, tmp_path / "dev", name="org/infra.git")
    url = server.url("org/infra.git")
    port = free_port()
    seen: list[str] = []
    log = tmp_path / "daemon.log"
    with FakeGitHub(repository="org/infra") as forge:
        encryption = f'recipients = ["{public}"]\nidentity_file = "{tmp_path / "ops_ed25519"}"\nenforced = true\n'
        config = configure(tmp_path, url, forge, port, encryption)
        applied = dev.push(deployment(tmp_path, first_file))
        with log.open("w") as out:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "controller", "run", "--config", str(config)], stdout=out, stderr=out
            )
        alive = lambda: daemon.poll() is None  # noqa: E731
        try:
            wait_until(lambda: ("success", "Applied: +2 ~0 -0") in states(forge, applied), "the apply", alive=alive)

            # a pull request that changes the secret: the plan shows the change, not the values
            git(dev.work, "checkout", "-q", "-b", "topic-1")
            (dev.work / "deployment.nix").write_text(deployment(tmp_path, second_file))
            git(dev.work, "commit", "-q", "-am", "rotate the admin password")
            git(dev.work, "push", "-q", "origin", "HEAD:refs/heads/topic-1", "HEAD:refs/pull/1/head")
            head = git(dev.work, "rev-parse", "HEAD").strip()
            forge.add_pull_request(1, head, head_branch="topic-1")
            send(port, "pull_request", pull_request_event("opened", 1, head, url), "d1")
            plan = "Plan: 0 to create, 2 to update, 0 to replace, 0 to delete"
            wait_until(lambda: ("success", plan) in states(forge, head), "the preview", alive=alive)
            (comment,) = forge.comments(1)
            assert "~ admin = (sensitive) -> (sensitive)  # a sensitive value changed" in comment.body, comment.body

            # merge it: applied, and the outcome on the pull request
            git(dev.work, "checkout", "-q", "main")
            git(dev.work, "merge", "-q", "--no-ff", "-m", "Merge pull request #1", "topic-1")
            git(dev.work, "push", "-q", "origin", "HEAD:refs/heads/main")
            merge = git(dev.work, "rev-parse", "HEAD").strip()
            send(port, "push", {"ref": "refs/heads/main", "after": merge, "repository": {"git_url": url}}, "d2")
            wait_until(lambda: ("success", "Applied: +0 ~2 -0") in states(forge, merge), "the merge", alive=alive)
            wait_until(lambda: f"Outcome** at {merge[:12]}" in forge.comments(1)[0].body, "the outcome on #1")

            # a failing commit: the provider's error quotes the password it was sent
            failing = dev.push(deployment(tmp_path, second_file, fail=True), message="break it")
            seen.append(call(port, "/api/v1/deployments/web/reconcile?wait=true", "POST"))
            assert failing in seen[-1] and "password (sensitive)" in seen[-1], seen[-1]
            for path in (
                "/api/v1/deployments",
                "/api/v1/deployments/web",
                "/api/v1/deployments/web/runs",
                "/api/v1/deployments/web/plan",
                "/api/v1/deployments/web/resources",
                "/api/v1/deployments/web/previews",
                "/metrics",
            ):
                seen.append(call(port, path))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        forge_text = [c.body for c in forge.comments(1)] + [str(r.body) for r in forge.requests]

    state = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"], cwd=dev.bare, capture_output=True, check=True
    ).stdout.decode(errors="replace")
    places = {
        "the daemon's log": log.read_text(),
        "the HTTP answers": "\n".join(seen),
        "what the forge was sent": "\n".join(forge_text),
        "the pushed repository": state,
    }
    for kept in (tmp_path / "data").rglob("*"):
        if kept.is_file() and not kept.is_symlink() and not kept.name.endswith(".digest-key"):
            places[f"data file {kept.relative_to(tmp_path)}"] = kept.read_bytes().decode(errors="replace")
    for where, text in places.items():
        for value in values:
            assert value not in text, f"{value!r} found in {where}"
    # the places looked at hold what happened
    assert "trace: connecting with (sensitive)" in places["the daemon's log"]
    assert "vault: made password (sensitive)" in places["the daemon's log"]
    assert '"admin":"(sensitive)"' in places["the HTTP answers"].replace(" ", "")
    assert "nixgitops_reconcile_total" in places["the HTTP answers"]

    # sealed to the SSH key: the real age tool opens them with it
    record = json.loads(git(dev.bare, "show", "nixgitops/state:web/resources/" + _location("db")))
    sealed = record["outputs"]["password"]["__nixgitopsSealed"]["age"]
    (tmp_path / "sealed.age").write_bytes(base64.b64decode(sealed))
    opened = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "ops_ed25519"), str(tmp_path / "sealed.age")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(opened) == made(second)

    # rotation on the controller: a new recipient, `state rekey --config` (one commit), pushed by the next run
    new_key = tmp_path / "new-identity.txt"
    subprocess.run(["age-keygen", "-o", str(new_key)], capture_output=True, check=True)
    new_public = next(line.split(": ")[1] for line in new_key.read_text().splitlines() if "public key" in line)
    text = config.read_text().replace(f'recipients = ["{public}"]', f'recipients = ["{public}", "{new_public}"]')
    config.write_text(text)
    cli = [sys.executable, "-m", "controller"]
    rekeyed = subprocess.run(
        [*cli, "state", "rekey", "--config", str(config), "--deployment", "web"], capture_output=True, text=True
    )
    assert rekeyed.returncode == 0 and "to 2 recipient(s)" in rekeyed.stdout, rekeyed.stdout + rekeyed.stderr
    subprocess.run([*cli, "reconcile", "web", "--config", str(config)], capture_output=True, text=True, timeout=300)
    assert "Rekey 2 resource(s)" in git(dev.bare, "log", "-1", "--format=%s", "nixgitops/state")
    record = json.loads(git(dev.bare, "show", "nixgitops/state:web/resources/" + _location("db")))
    (tmp_path / "rekeyed.age").write_bytes(base64.b64decode(record["inputs"]["admin"]["__nixgitopsSealed"]["age"]))
    opened = subprocess.run(
        ["age", "-d", "-i", str(new_key), str(tmp_path / "rekeyed.age")], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(opened) == second


def test_enforced_encryption_without_recipients_calls_no_provider(tmp_path: Path, server: GitServer) -> None:
    (tmp_path / "secrets").mkdir()
    secret_file = tmp_path / "secrets" / "admin"
    secret_file.write_text("never-written-" + "3f" * 8)
    (tmp_path / "dev").mkdir()
    dev = Developer(server, tmp_path / "dev", name="org/infra.git")
    dev.push(deployment(tmp_path, secret_file))
    with FakeGitHub(repository="org/infra") as forge:
        config = configure(tmp_path, server.url("org/infra.git"), forge, free_port(), "enforced = true\n")
        done = subprocess.run(
            [sys.executable, "-m", "controller", "reconcile", "web", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "Encryption is enforced" in done.stdout + done.stderr and "recipients" in done.stdout + done.stderr
    assert not (tmp_path / "vault.log").exists(), "the provider was called"
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert b"never-written" not in path.read_bytes(), path


def _location(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()[:2] + f"/{path}.json"


def test_previews_decrypt_nothing_unless_allowed(tmp_path: Path, server: GitServer) -> None:
    """A pull request's code is not reviewed yet: its preview gets no identity (a sensitive output it reads is
    refused, saying how to allow it) unless previews_decrypt = true; an apply of the same deployment has one."""
    from controller.config import load
    from controller.reconciler import Reconciler

    (tmp_path / "secrets").mkdir()
    ssh_key(tmp_path / "ops_ed25519")
    public = (tmp_path / "ops_ed25519.pub").read_text().strip()
    encryption = f'recipients = ["{public}"]\nidentity_file = "{tmp_path / "ops_ed25519"}"\n'
    with FakeGitHub(repository="org/infra") as forge:
        path = configure(tmp_path, server.url("org/infra.git"), forge, free_port(), encryption)
    allowing = path.read_text()
    for allowed in (False, True):
        path.write_text(allowing if allowed else allowing.replace("previews_decrypt = true\n", ""))
        config = load(path)
        reconciler = Reconciler(config, config.deployment("web"))
        repo = pygit2.init_repository(str(tmp_path / f"state-{allowed}"), bare=True)
        checkout = tmp_path / f"checkout-{allowed}"
        checkout.mkdir()
        preview = reconciler.engine("0" * 40, checkout, log=None, repo=repo, preview=True).sealer.encryption
        applying = reconciler.engine("0" * 40, checkout, log=None, repo=repo).sealer.encryption
        assert applying.identity_files == (tmp_path / "ops_ed25519",)
        assert preview.identity_files == ((tmp_path / "ops_ed25519",) if allowed else ())
        if not allowed:
            assert "previews_decrypt = true" in preview.identity_hint
