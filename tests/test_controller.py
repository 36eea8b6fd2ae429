"""The controller against a real git server on loopback: reconcile, push state back, refuse what is unsafe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_clean_error, git, wait_until
from gitserver import Developer, GitServer, free_port

DEPLOYMENT = """{ members, providers, ... }: {
  members.greeting = { type = providers.local.exec; inputs = { executable = "echo"; args = [ "TEXT" ]; }; };
  members.motd = {
    type = providers.local.file;
    inputs = { name = "motd.txt"; contents = members.greeting.outputs.stdout; };
  };
}
"""


@pytest.fixture
def dev(server: GitServer, tmp_path: Path) -> Developer:
    return Developer(server, tmp_path)


def configure(tmp_path: Path, url: str, extra: str = "", interval: str = "1m") -> Path:
    config = tmp_path / "nixgitops.toml"
    config.write_text(
        f'[controller]\ndata_dir = "{tmp_path / "data"}"\n\n[server]\nlisten = "127.0.0.1:{free_port()}"\n\n'
        f'[deployments.web]\nrepository = "{url}"\ninterval = "{interval}"\n{extra}\n'
    )
    return config


def nixgitops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def outcome(status: Path) -> str | None:
    """The last run's outcome in a status file, or None before the first run."""
    try:
        return str(json.loads(status.read_text())["lastRun"]["outcome"])
    except (OSError, ValueError, KeyError):
        return None


def workdir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "work" / "web"


def test_reconcile_applies_and_pushes_state(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    config = configure(tmp_path, server.url("infra.git"))
    first = dev.push(DEPLOYMENT.replace("TEXT", "one"))
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "web: success" in done.stdout
    assert (workdir(tmp_path) / "motd.txt").read_text() == "one\n"
    assert f"Source-Commit: {first}" in dev.state_log()

    second = dev.push(DEPLOYMENT.replace("TEXT", "two"))
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 0
    assert (workdir(tmp_path) / "motd.txt").read_text() == "two\n"
    log = dev.state_log()
    assert f"Source-Commit: {second}" in log and f"Source-Commit: {first}" in log

    again = nixgitops("reconcile", "web", "--config", str(config))
    assert again.returncode == 0 and "no-change" in again.stdout
    status = json.loads(nixgitops("status", "--config", str(config), "--json").stdout)[0]
    assert status["sourceCommit"] == second
    assert set(status["lastRun"]["phases"]) >= {"fetch", "evaluate", "apply", "commit"}
    # the recorded plan lists what changes; unchanged resources are only counted
    assert status["lastPlan"]["changes"] == [] and status["lastPlan"]["summary"]["noop"] == 2


def test_daemon_applies_each_push(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    config = configure(tmp_path, server.url("infra.git"), interval="1s")
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for text in ("one", "two", "three"):
            sha = (
                dev.push(DEPLOYMENT.replace("TEXT", text))
                if text != "one"
                else git(dev.work, "rev-parse", "HEAD").strip()
            )
            wait_until(
                lambda: f"Source-Commit: {sha}" in dev.state_log(),  # noqa: B023 - used at once
                f"{text} applied",
                alive=lambda: daemon.poll() is None,
            )
            assert (workdir(tmp_path) / "motd.txt").read_text() == f"{text}\n"
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert "stopped" in err


def test_unreachable_remote_is_retried_until_it_returns(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    server.stop()
    config = configure(tmp_path, server.url("infra.git"), interval="2s")
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert_clean_error(done, "Cannot reach git://127.0.0.1")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = tmp_path / "data" / "status" / "web.json"
    try:
        wait_until(lambda: outcome(status) == "unavailable", "a run that finds the remote unreachable")
        server.start()
        wait_until(lambda: outcome(status) == "success", "recovery when the remote returned")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def test_missing_branch(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    config = configure(tmp_path, server.url("infra.git"), 'branch = "release"')
    assert_clean_error(nixgitops("reconcile", "web", "--config", str(config)), "branch 'release' does not exist")


def test_rewound_branch_is_refused_unless_allowed(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    config = configure(tmp_path, server.url("infra.git"))
    first = dev.push(DEPLOYMENT.replace("TEXT", "one"))
    dev.push(DEPLOYMENT.replace("TEXT", "two"))
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 0
    git(dev.work, "push", "-q", "--force", "origin", f"{first}:refs/heads/main")
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert_clean_error(done, "does not descend from the last applied commit", "allow_rewind")
    assert (workdir(tmp_path) / "motd.txt").read_text() == "two\n"
    allowed = nixgitops(
        "reconcile", "web", "--config", str(config), env={"NIXGITOPS__DEPLOYMENTS__WEB__ALLOW_REWIND": "true"}
    )
    assert allowed.returncode == 0, allowed.stderr
    assert (workdir(tmp_path) / "motd.txt").read_text() == "one\n"


def test_signature_verification(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    key = tmp_path / "signing"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"test@example.invalid {(tmp_path / 'signing.pub').read_text()}")
    config = configure(tmp_path, server.url("infra.git"), f'verify = {{ allowed_signers = "{signers}" }}')
    dev.push(DEPLOYMENT.replace("TEXT", "unsigned"))
    assert_clean_error(nixgitops("reconcile", "web", "--config", str(config)), "is not signed by a trusted key")
    assert not (workdir(tmp_path) / "motd.txt").exists()
    dev.push_signed(DEPLOYMENT.replace("TEXT", "signed"), ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"])
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert (workdir(tmp_path) / "motd.txt").read_text() == "signed\n"


def test_a_nix_error_keeps_state_and_the_next_good_commit_applies(
    tmp_path: Path, server: GitServer, dev: Developer
) -> None:
    config = configure(tmp_path, server.url("infra.git"))
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 0
    broken = dev.push("{ members, ... }: { members.x = ; }")
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert_clean_error(done, "syntax error")
    assert (workdir(tmp_path) / "motd.txt").read_text() == "one\n"
    status = json.loads(nixgitops("status", "--config", str(config), "--json").stdout)[0]
    assert status["lastRun"]["outcome"] == "evaluation-failed"
    assert status["failedEvaluationCommit"] == broken

    from controller.config import load
    from controller.reconciler import Reconciler

    reconciler = Reconciler(load(config), load(config).deployment("web"))
    assert reconciler.reconcile().outcome == "skipped", "a commit that failed to evaluate is not retried by polling"
    good = dev.push(DEPLOYMENT.replace("TEXT", "two"))
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 0
    assert (workdir(tmp_path) / "motd.txt").read_text() == "two\n"
    assert f"Source-Commit: {good}" in dev.state_log()


def test_remote_state_moved_by_someone_else_stops_the_deployment(
    tmp_path: Path, server: GitServer, dev: Developer
) -> None:
    config = configure(tmp_path, server.url("infra.git"))
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 0
    git(dev.work, "push", "-q", "--force", "origin", "HEAD:refs/heads/nixgitops/state")
    dev.push(DEPLOYMENT.replace("TEXT", "two"))
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert_clean_error(done, "another writer exists")
    assert (workdir(tmp_path) / "motd.txt").read_text() == "one\n"
    assert_clean_error(nixgitops("reconcile", "web", "--config", str(config)), "stopped until an operator acts")
    assert_clean_error(nixgitops("resume", "web", "--config", str(config)), "--adopt-remote-state")
    assert nixgitops("resume", "web", "--config", str(config), "--adopt-remote-state").returncode == 0
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert done.returncode == 0, done.stderr


def remote_resources(dev: Developer) -> set[str]:
    """The resource records on the served state branch."""
    names = git(dev.bare, "ls-tree", "-r", "--name-only", "nixgitops/state", "web/resources/").split()
    return {Path(n).name for n in names}


def test_a_commit_that_declares_nothing_is_refused_unless_allowed(
    tmp_path: Path, server: GitServer, dev: Developer
) -> None:
    import urllib.request

    config = configure(tmp_path, server.url("infra.git"), 'drift_interval = "off"', interval="1s")
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 0
    assert remote_resources(dev) == {"greeting.json", "motd.json"}
    empty = dev.push("{ ... }: { }")
    from controller.config import load

    port = load(config).server.port
    daemon = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    try:
        # refused at every poll (not skipped like a commit that does not evaluate), so the alert stays on
        wait_until(
            lambda: 'nixgitops_reconcile_total{deployment="web",result="refused"} 2.0' in scrape(),
            "two refused runs counted",
            alive=lambda: daemon.poll() is None,
        )
        status = json.loads(nixgitops("status", "--config", str(config), "--json").stdout)[0]
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    run = status["lastRun"]
    assert run["outcome"] == "refused" and run["source_commit"] == empty
    for needle in (f"(commit {empty[:12]}) declares no resources", "(2 resources)", "allow_empty = true", "destroy"):
        assert needle in run["message"], run["message"]
    assert status["failedEvaluationCommit"] is None
    assert "web] refused: " in err
    assert (workdir(tmp_path) / "motd.txt").read_text() == "one\n"
    assert remote_resources(dev) == {"greeting.json", "motd.json"}, "state unchanged"
    assert f"Source-Commit: {empty}" in dev.state_log() and "(plan refused" in dev.state_log(), "the attempt"

    done = nixgitops("reconcile", "web", "--config", str(config))
    assert_clean_error(done, "declares no resources", "allow_empty = true")
    assert "web: refused" in done.stdout
    kept = nixgitops("reconcile", "web", "--config", str(config), env={"NIXGITOPS__DEPLOYMENTS__WEB__PRUNE": "false"})
    assert kept.returncode == 0, "with prune = false nothing would be deleted, so nothing is refused"
    assert remote_resources(dev) == {"greeting.json", "motd.json"}
    allowed = nixgitops(
        "reconcile", "web", "--config", str(config), env={"NIXGITOPS__DEPLOYMENTS__WEB__ALLOW_EMPTY": "true"}
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "web: success" in allowed.stdout
    assert not (workdir(tmp_path) / "motd.txt").exists()
    assert remote_resources(dev) == set()
    assert f"Apply {empty[:12]}: +0 ~0 -2" in dev.state_log()


def test_plan_only_and_suspend(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    config = configure(tmp_path, server.url("infra.git"), 'apply = "plan-only"')
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert done.returncode == 3 and "planned" in done.stdout, "plan-only applies nothing, so it is not exit 0"
    status = json.loads(nixgitops("status", "--config", str(config), "--json").stdout)[0]
    assert {c["action"] for c in status["lastPlan"]["changes"]} == {"create"}
    assert not (workdir(tmp_path) / "motd.txt").exists()
    assert nixgitops("suspend", "web", "--config", str(config)).returncode == 0
    assert_clean_error(nixgitops("reconcile", "web", "--config", str(config)), "suspended")
    assert nixgitops("resume", "web", "--config", str(config)).returncode == 0
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 3


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("[deployments.web]\n", "`deployments.web.repository`"),
        ('[deployments.web]\nrepository = "x"\napply = "sometimes"\n', "`deployments.web.apply`"),
        ('[deployments.web]\nrepository = "x"\ninterval = "soon"\n', "`deployments.web.interval`"),
        ('[deployments.web]\nrepository = "x"\ncolour = "blue"\n', "`deployments.web.colour` in"),
        ("[controller]\n", "at least one deployment"),
        ("not = [toml", "is not valid TOML"),
    ],
)
def test_config_errors_name_the_key_and_the_file(tmp_path: Path, body: str, needle: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(body)
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert_clean_error(done, needle, str(config))


def test_a_hanging_deployment_does_not_delay_another(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    import socket

    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    silent = socket.socket()  # accepts connections and never answers: a remote that hangs
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    config = tmp_path / "nixgitops.toml"
    config.write_text(
        f'[controller]\ndata_dir = "{tmp_path / "data"}"\n[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[deployments.stuck]\nrepository = "git://127.0.0.1:{silent.getsockname()[1]}/x.git"\ninterval = "1s"\n'
        f'[deployments.web]\nrepository = "{server.url("infra.git")}"\ninterval = "1s"\n'
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = tmp_path / "data" / "status" / "web.json"
    try:
        wait_until(lambda: outcome(status) == "success", "web applied while the other deployment hangs")
        assert not (tmp_path / "data" / "status" / "stuck.json").exists(), "stuck is still in its first run"
    finally:
        daemon.kill()
        daemon.wait(timeout=30)
        silent.close()


def test_gpg_signature_verification(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Test <test@example.invalid>",
            "ed25519",
            "sign",
            "never",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    stranger = tmp_path / "stranger"
    stranger.mkdir(mode=0o700)
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Other <o@example.invalid>",
            "ed25519",
            "sign",
            "never",
        ],
        env={**os.environ, "GNUPGHOME": str(stranger)},
        check=True,
        capture_output=True,
    )
    config = configure(tmp_path, server.url("infra.git"), f'verify = {{ gpg_home = "{home}" }}')

    dev.push_signed(
        DEPLOYMENT.replace("TEXT", "untrusted"),
        ["-c", "user.signingkey=o@example.invalid"],
        {"GNUPGHOME": str(stranger)},
    )
    assert_clean_error(nixgitops("reconcile", "web", "--config", str(config)), "is not signed by a trusted key")
    dev.push_signed(
        DEPLOYMENT.replace("TEXT", "trusted"),
        ["-c", "user.signingkey=test@example.invalid"],
        {"GNUPGHOME": str(home)},
    )
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert (workdir(tmp_path) / "motd.txt").read_text() == "trusted\n"


def test_two_processes_never_reconcile_one_deployment_at_once(
    tmp_path: Path, server: GitServer, dev: Developer
) -> None:
    import fcntl

    config = configure(tmp_path, server.url("infra.git"))
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    lock = tmp_path / "data" / "locks" / "web.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        done = nixgitops("reconcile", "web", "--config", str(config))
        assert done.returncode != 0 and "busy" in done.stdout
    assert not (workdir(tmp_path) / "motd.txt").exists()
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 0


def test_a_push_whose_record_was_lost_is_not_a_conflict(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    config = configure(tmp_path, server.url("infra.git"))
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 0
    cache = tmp_path / "data" / "git" / "web"
    git(cache, "update-ref", "-d", "refs/nixgitops/pushed/nixgitops/state")  # as if killed right after the push
    second = dev.push(DEPLOYMENT.replace("TEXT", "two"))
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f"Source-Commit: {second}" in dev.state_log()


def test_recovery_runs_providers_in_the_work_directory(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    extra = 'members.extra = { type = providers.local.file; inputs = { name = "extra.txt"; contents = "x"; }; };'
    text = DEPLOYMENT.replace("TEXT", "one").replace("members.greeting", extra + "\n  members.greeting", 1)
    config = configure(tmp_path, server.url("infra.git"))
    dev.push(text)
    journal = tmp_path / "data" / "journal" / "web.journal"
    journal.parent.mkdir(parents=True)
    record = {"path": "extra", "type": "local.file", "inputs": {"name": "extra.txt", "contents": "x"}, "outputs": {}}
    intent = {
        "kind": "intent",
        "id": 1,
        "path": "extra",
        "pid": 0,
        "record": record,
        "provider": {"name": "local", "executable": sys.executable, "args": ["-m", "controller.local_provider"]},
        "message": {"createResourceRequest": {"type": "file", "inputProperties": record["inputs"], "isStateful": True}},
    }
    journal.write_text(json.dumps(intent) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "controller", "reconcile", "web", "--config", str(config)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "recovered: extra: a createResourceRequest was in flight" in done.stderr
    assert (workdir(tmp_path) / "extra.txt").read_text() == "x"
    assert not (elsewhere / "extra.txt").exists()
    assert "Recover an interrupted run" in dev.state_log()


def test_a_signed_github_push_is_applied_without_polling(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    import hashlib
    import hmac
    import urllib.request

    secret = tmp_path / "secret"
    secret.write_text("hook-secret\n")
    port = free_port()
    config = tmp_path / "nixgitops.toml"
    url = server.url("infra.git")
    config.write_text(
        f'[controller]\ndata_dir = "{tmp_path / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[deployments.web]\nrepository = "{url}"\ninterval = "1h"\n'
        f'[receivers.gh]\nkind = "github"\nsecret_file = "{secret}"\ndeployments = ["web"]\n'
    )
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            (workdir(tmp_path) / "motd.txt").exists, "the start-up reconcile", alive=lambda: daemon.poll() is None
        )
        sha = dev.push(DEPLOYMENT.replace("TEXT", "two"))
        body = json.dumps({"ref": "refs/heads/main", "after": sha, "repository": {"git_url": url}}).encode()
        signature = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/hooks/gh",
            data=body,
            headers={"X-Hub-Signature-256": signature, "X-GitHub-Event": "push", "X-GitHub-Delivery": "x1"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            assert json.loads(response.read())["deployments"] == ["web"]
        wait_until(lambda: f"Source-Commit: {sha}" in dev.state_log(), "the webhook's push applied")
        assert (workdir(tmp_path) / "motd.txt").read_text() == "two\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'nixgitops_reconcile_total{deployment="web",result="success"}' in metrics
        assert 'nixgitops_webhook_requests_total{receiver="gh",result="triggered"} 1.0' in metrics
        # The command line talks to the running controller instead of reconciling on its own.
        done = nixgitops("reconcile", "web", "--config", str(config))
        assert done.returncode == 0, done.stderr
        assert "asking the running controller" in done.stderr and "web: no-change" in done.stdout
        api = f"http://127.0.0.1:{port}/api/v1/deployments/web"
        with urllib.request.urlopen(api + "/resources", timeout=10) as response:
            assert {r["path"] for r in json.loads(response.read())} == {"greeting", "motd"}
        with urllib.request.urlopen(api + "/runs", timeout=10) as response:
            assert json.loads(response.read())[0]["outcome"] == "no-change"
        status = json.loads(nixgitops("status", "--config", str(config), "--json").stdout)
        assert status[0]["deployment"] == "web" and status[0]["sourceCommit"] == sha
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def test_drift_is_found_by_reading_resources_back(tmp_path: Path, server: GitServer, dev: Developer) -> None:
    config = configure(tmp_path, server.url("infra.git"), 'drift_interval = "1ms"')
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    assert nixgitops("reconcile", "web", "--config", str(config)).returncode == 0

    def drift() -> dict[str, object]:
        return json.loads(nixgitops("status", "--config", str(config), "--json").stdout)[0]["drift"]  # type: ignore[no-any-return]

    assert drift()["resources"] == []
    assert drift()["cannotTell"] == 1, "local.exec cannot tell"
    (workdir(tmp_path) / "motd.txt").write_text("edited by hand\n")
    done = nixgitops("reconcile", "web", "--config", str(config))
    assert done.returncode == 0 and "no-change" in done.stdout
    assert drift()["resources"] == ["motd"]
    (workdir(tmp_path) / "motd.txt").unlink()
    nixgitops("reconcile", "web", "--config", str(config))
    assert drift()["resources"] == ["motd"], "a resource that is gone has drifted too"


@pytest.mark.parametrize("evaluation", ["restricted", "unrestricted", "allowed-paths"])
def test_polls_of_an_applied_commit_do_not_evaluate_again(
    tmp_path: Path, server: GitServer, dev: Developer, evaluation: str
) -> None:
    """In restricted mode (and no allowed_paths) an evaluation depends only on the commit: polling the commit
    already applied, with the state unchanged, skips evaluation; a forced run, a new commit, unrestricted
    evaluation or allowed paths (which may change between polls) evaluate."""
    from controller.config import load
    from controller.reconciler import Reconciler

    restricted = evaluation == "restricted"
    extra = (
        'drift_interval = "off"\n'
        + {
            "restricted": "",
            "unrestricted": "restrict_eval = false\n",
            "allowed-paths": f'allowed_paths = ["{tmp_path}"]\n',
        }[evaluation]
    )
    config = load(configure(tmp_path, server.url("infra.git"), extra))
    dev.push(DEPLOYMENT.replace("TEXT", "one"))
    reconciler = Reconciler(config, config.deployment("web"))
    assert reconciler.reconcile().outcome == "success"
    poll = reconciler.reconcile()
    assert poll.outcome == "no-change"
    assert ("evaluate" not in poll.phases) is restricted, poll
    forced = reconciler.reconcile(force=True)
    assert forced.outcome == "no-change" and "evaluate" in forced.phases
    dev.push(DEPLOYMENT.replace("TEXT", "two"))
    assert reconciler.reconcile().outcome == "success"
    assert (workdir(tmp_path) / "motd.txt").read_text() == "two\n"
