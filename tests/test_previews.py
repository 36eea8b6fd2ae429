"""Pull requests end to end: a real daemon, a real git remote and a fake GitHub on loopback (tests/fakeforge.py,
which checks each request against GitHub's documented API), webhooks signed as GitHub signs them.

Open a pull request: its head gets a pending then a success status and one comment with the plan; push again: the
same comment is edited; merge: the applied status on the merge commit and the outcome on the pull request; a pull
request from a fork is not evaluated. And, in-process, a stale reviewed plan is held until approved.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import signal
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from conftest import git, wait_until
from fakeforge import FakeGitHub
from gitserver import Developer, GitServer, free_port

PAYLOADS = Path(__file__).parent / "webhook_payloads" / "github"

DEPLOYMENT = """{ providers, ... }: {
  members = {
MEMBERS
  };
}
"""


def deployment(**values: str) -> str:
    lines = [
        f'    {name} = {{ type = providers.local.memo; inputs.initialize_with = "{v}"; }};'
        for name, v in values.items()
    ]
    return DEPLOYMENT.replace("MEMBERS", "\n".join(lines))


def configure(tmp_path: Path, url: str, forge: FakeGitHub, port: int, extra: str = "") -> Path:
    token, secret = tmp_path / "forge-token", tmp_path / "hook-secret"
    token.write_text(forge.token + "\n")
    secret.write_text("hook-secret\n")
    config = tmp_path / "nixgitops.toml"
    config.write_text(
        f'[controller]\ndata_dir = "{tmp_path / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[forges.gh]\nkind = "github"\napi_url = "{forge.url}"\ntoken_file = "{token}"\n'
        f'[receivers.hub]\nkind = "github"\nsecret_file = "{secret}"\ndeployments = ["web"]\n'
        f'[deployments.web]\nrepository = "{url}"\ninterval = "1h"\ndrift_interval = "off"\nforge = "gh"\n'
        f"previews = true\n{extra}"
    )
    return config


def pull_request_event(action: str, number: int, head: str, url: str, *, fork: bool = False) -> dict[str, Any]:
    """GitHub's published example of a pull_request delivery, pointed at this repository and head."""
    data: dict[str, Any] = json.loads((PAYLOADS / "pull_request.opened.json").read_text())
    data = copy.deepcopy(data)
    data["action"], data["number"] = action, number
    pr = data["pull_request"]
    pr["number"], pr["head"]["sha"], pr["base"]["ref"] = number, head, "main"
    for side in ("head", "base"):
        pr[side]["repo"].update(clone_url=url, git_url=url, ssh_url=url, html_url=url)
    pr["head"]["repo"]["id"] = pr["base"]["repo"]["id"] + (1 if fork else 0)
    if fork:
        pr["head"]["repo"].update(clone_url="git://127.0.0.1:1/someone/infra.git", git_url=None, ssh_url=None)
    data["repository"].update(clone_url=url, git_url=url, ssh_url=url, html_url=url)
    return data


def send(port: int, event: str, data: dict[str, Any], delivery: str) -> dict[str, Any]:
    body = json.dumps(data).encode()
    signature = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hooks/hub",
        data=body,
        headers={"X-Hub-Signature-256": signature, "X-GitHub-Event": event, "X-GitHub-Delivery": delivery},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 202)
        return json.loads(response.read())  # type: ignore[no-any-return]


def push_pull(dev: Developer, number: int, text: str, message: str) -> str:
    """Commit ``text`` on the pull request's branch and push it as GitHub keeps it: refs/pull/N/head."""
    (dev.work / "deployment.nix").write_text(text)
    git(dev.work, "commit", "-q", "-am", message)
    git(dev.work, "push", "-q", "origin", f"HEAD:refs/heads/topic-{number}", f"HEAD:refs/pull/{number}/head")
    return git(dev.work, "rev-parse", "HEAD").strip()


def states(forge: FakeGitHub, sha: str) -> list[tuple[str, str]]:
    return [(s.state, s.description or "") for s in forge.statuses(sha) if s.context == "nixgitops/web"]


def test_a_pull_request_gets_its_plan_and_then_its_outcome(tmp_path: Path, server: GitServer) -> None:
    (tmp_path / "dev").mkdir()
    dev = Developer(server, tmp_path / "dev", name="org/infra.git")
    url = server.url("org/infra.git")
    port = free_port()
    with FakeGitHub(repository="org/infra") as forge:
        config = configure(tmp_path, url, forge, port)
        first = dev.push(deployment(motd="one"))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        alive = lambda: daemon.poll() is None  # noqa: E731
        try:
            wait_until(
                lambda: ("success", "Applied: +1 ~0 -0") in states(forge, first), "the applied status", alive=alive
            )

            # open a pull request: pending, then the plan as the status and as one comment
            git(dev.work, "checkout", "-q", "-b", "topic-1")
            head = push_pull(dev, 1, deployment(motd="two", extra="new"), "change motd, add extra")
            forge.add_pull_request(1, head, head_branch="topic-1")
            answer = send(port, "pull_request", pull_request_event("opened", 1, head, url), "d1")
            assert answer.get("result") == "preview" or "web" in json.dumps(answer), answer
            plan = "Plan: 1 to create, 1 to update, 0 to replace, 0 to delete"
            wait_until(lambda: ("success", plan) in states(forge, head), "the preview's status", alive=alive)
            assert states(forge, head)[0][0] == "pending"
            (comment,) = forge.comments(1)
            assert comment.body.startswith("<!-- nixgitops:web -->")
            assert "~ motd (local.memo)" in comment.body and "+ extra (local.memo)" in comment.body
            assert head[:12] in comment.body

            # push again: the same comment, edited
            newer = push_pull(dev, 1, deployment(motd="three", extra="new"), "motd three")
            forge.add_pull_request(1, newer, head_branch="topic-1")
            send(port, "pull_request", pull_request_event("synchronize", 1, newer, url), "d2")
            wait_until(lambda: ("success", plan) in states(forge, newer), "the second preview", alive=alive)
            (edited,) = forge.comments(1)
            assert edited.id == comment.id and newer[:12] in edited.body and '"three"' in edited.body
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/deployments/web/previews", timeout=10) as r:
                shown = json.loads(r.read())["pulls"]["1"]
            assert shown["head"] == newer and shown["summary"] == plan and '"three"' in shown["plan"]

            # merge: the merge commit is applied, its status and the pull request's comment say so
            git(dev.work, "checkout", "-q", "main")
            git(dev.work, "merge", "-q", "--no-ff", "-m", "Merge pull request #1", "topic-1")
            git(dev.work, "push", "-q", "origin", "HEAD:refs/heads/main")
            merge = git(dev.work, "rev-parse", "HEAD").strip()
            send(port, "push", {"ref": "refs/heads/main", "after": merge, "repository": {"git_url": url}}, "d3")
            wait_until(lambda: ("success", "Applied: +1 ~1 -0") in states(forge, merge), "the outcome", alive=alive)
            wait_until(lambda: f"Outcome** at {merge[:12]}" in forge.comments(1)[0].body, "the outcome on #1")
            assert len(forge.comments(1)) == 1

            # a pull request from a fork: no evaluation, no status, no comment
            git(dev.work, "checkout", "-q", "-b", "topic-2")
            fork_head = push_pull(dev, 2, deployment(motd="evil", extra="new"), "from a fork")
            forge.add_pull_request(2, fork_head, head_branch="topic-2", from_fork=True)
            answer = send(port, "pull_request", pull_request_event("opened", 2, fork_head, url, fork=True), "d4")
            assert "fork" in json.dumps(answer), answer
            reconcile = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/deployments/web/reconcile?wait=true", data=b"", method="POST"
            )
            with urllib.request.urlopen(reconcile, timeout=120) as response:  # a poll lists open pull requests too
                assert response.status == 200
            assert states(forge, fork_head) == [] and forge.comments(2) == []
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                metrics = response.read().decode()
            assert 'nixgitops_previews_total{deployment="web",result="success"}' in metrics
            assert 'nixgitops_previews_total{deployment="web",result="skipped-fork"}' in metrics
            assert 'nixgitops_forge_requests_total{forge="gh",result="ok"}' in metrics
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)


TWO_PARTS = """{ providers, ... }:
let
  a = "A";
  # (lines apart, so that a change of a and a change of b merge without a conflict)
  separator1 = 1;
  separator2 = 2;
  separator3 = 3;
  b = "B";
in {
  members.m = { type = providers.local.memo; inputs.initialize_with = "${a}-${b}"; };
}
"""


def test_a_merge_whose_plan_was_not_reviewed_is_held_until_approved(tmp_path: Path, server: GitServer) -> None:
    from controller.config import load
    from controller.previews import Previews
    from controller.reconciler import Reconciler
    from webhooks.forge import PullRequest

    (tmp_path / "dev").mkdir()
    dev = Developer(server, tmp_path / "dev", name="org/infra.git")
    url = server.url("org/infra.git")
    with FakeGitHub(repository="org/infra") as forge:
        config = configure(tmp_path, url, forge, free_port(), extra="require_reviewed_plan = true\n")
        loaded = load(config)
        reconciler = Reconciler(loaded, loaded.deployment("web"))
        previews = reconciler.previews
        assert isinstance(previews, Previews)

        first = dev.push(TWO_PARTS)
        assert reconciler.reconcile().outcome == "held", "a commit no pull request brought is held"
        reconciler.approve(first[:10])
        assert reconciler.reconcile().outcome == "success"

        # a pull request changes b; it is previewed against the state of now
        git(dev.work, "checkout", "-q", "-b", "topic-1")
        head = push_pull(dev, 1, TWO_PARTS.replace('b = "B"', 'b = "B2"'), "b two")
        forge.add_pull_request(1, head, head_branch="topic-1")
        pr = PullRequest(1, head, "main", "refs/pull/1/head", False)
        assert previews.ask(pr) and previews.run(pr).outcome == "success"
        assert "has moved past" not in forge.comments(1)[0].body

        # meanwhile a change of a is approved and applied: the state moves under the reviewed plan
        git(dev.work, "checkout", "-q", "main")
        (dev.work / "deployment.nix").write_text(TWO_PARTS.replace('a = "A"', 'a = "A2"'))
        git(dev.work, "commit", "-q", "-am", "a two")
        git(dev.work, "push", "-q", "origin", "HEAD:refs/heads/main")
        direct = git(dev.work, "rev-parse", "HEAD").strip()
        assert reconciler.reconcile().outcome == "held"
        reconciler.approve(direct)
        assert reconciler.reconcile().outcome == "success"

        # previewed again now, the comment says the base branch moved past the pull request's merge base
        assert previews.run(pr).outcome == "success"
        (comment,) = forge.comments(1)
        assert "has moved past this pull request's merge base" in comment.body
        # a newer head supersedes an older one still queued: the older shows nothing
        newer = PullRequest(1, direct, "main", "refs/pull/1/head", False)
        assert previews.ask(newer)
        before = len(forge.requests)
        assert previews.run(pr).outcome == "superseded" and len(forge.requests) == before
        assert previews.ask(pr)  # (the pull request's real head again, for what follows)

        # the merge's plan (A2-B -> A2-B2) is not the plan shown (A-B -> A-B2): held, and the status says why
        git(dev.work, "merge", "-q", "--no-ff", "-m", "Merge pull request #1", "topic-1")
        git(dev.work, "push", "-q", "origin", "HEAD:refs/heads/main")
        merge = git(dev.work, "rev-parse", "HEAD").strip()
        held = reconciler.reconcile()
        previews.flush()  # (statuses go out on a thread of their own)
        assert held.outcome == "held" and "not the plan last shown on pull request #1" in held.message, held
        assert "nixgitops approve web" in held.message
        (status,) = [s for s in forge.statuses(merge) if s.context == "nixgitops/web"]
        assert status.state == "failure" and (status.description or "").startswith("Held:")
        assert reconciler.reconcile().outcome == "held", "held again at the next poll"

        reconciler.approve(merge)
        done = reconciler.reconcile()
        previews.flush()
        assert done.outcome == "success", done
        assert ("success", "Applied: +0 ~1 -0") in states(forge, merge)

        previews.close()

        # a restart loses nothing: the digests and approvals are in the data directory
        again = Reconciler(loaded, loaded.deployment("web"))
        assert again.previews is not None and again.previews.book.approved(merge)
        assert again.previews.book.pulls()["1"]["head"] == head
        again.previews.close()


def test_a_forge_that_cannot_be_used_never_fails_a_run(tmp_path: Path, server: GitServer) -> None:
    """The token file gone after start-up: the run applies, and says why nothing was shown."""
    from controller.config import load
    from controller.reconciler import Reconciler

    (tmp_path / "dev").mkdir()
    dev = Developer(server, tmp_path / "dev", name="org/infra.git")
    with FakeGitHub(repository="org/infra") as forge:
        config = configure(tmp_path, server.url("org/infra.git"), forge, free_port())
        loaded = load(config)
        (tmp_path / "forge-token").unlink()
        said: list[str] = []
        reconciler = Reconciler(loaded, loaded.deployment("web"), log=said.append)
        dev.push(deployment(motd="one"))
        assert reconciler.reconcile().outcome == "success"
        assert any("no previews or statuses" in line for line in said), said
        assert forge.requests == []
        # ... but a deployment that applies only reviewed plans applies nothing it cannot check
        strict = Reconciler(loaded, replace(loaded.deployment("web"), require_reviewed_plan=True), log=said.append)
        dev.push(deployment(motd="two"))
        run = strict.reconcile()
        assert run.outcome == "held" and "cannot be checked" in run.message, run


def test_forks_are_not_previewed_with_unrestricted_evaluation(tmp_path: Path) -> None:
    from controller.config import ConfigError, load

    with FakeGitHub(repository="org/infra") as forge:
        config = configure(
            tmp_path, "https://example.org/org/infra.git", forge, free_port(), "previews_from_forks = true\n"
        )
        load(config)  # restricted: allowed
        config.write_text(config.read_text() + "restrict_eval = false\n")
        try:
            load(config)
        except ConfigError as exc:
            assert "previews_from_forks" in str(exc) and "restricted mode" in str(exc)
        else:
            raise AssertionError("a fork's code would have been evaluated unrestricted")


def test_the_daemon_holds_a_stale_reviewed_plan_until_approved(tmp_path: Path, server: GitServer) -> None:
    """As above, through a running controller: webhooks, its status API and `nixgitops approve` from the command
    line (the approval is in the data directory, which the daemon reads at its next run)."""
    (tmp_path / "dev").mkdir()
    dev = Developer(server, tmp_path / "dev", name="org/infra.git")
    url = server.url("org/infra.git")
    port = free_port()
    with FakeGitHub(repository="org/infra") as forge:
        config = configure(tmp_path, url, forge, port, extra="require_reviewed_plan = true\n")
        first = dev.push(TWO_PARTS)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        alive = lambda: daemon.poll() is None  # noqa: E731

        def held(sha: str) -> bool:
            return any(s.startswith("Held:") for state, s in states(forge, sha) if state == "failure")

        def approve_and_apply(sha: str) -> None:
            done = subprocess.run(
                [sys.executable, "-m", "controller", "approve", "web", sha, "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0 and "approved" in done.stdout, done.stdout + done.stderr
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/deployments/web/reconcile?wait=true", data=b"", method="POST"
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                assert json.loads(response.read())["outcome"] == "success"

        try:
            wait_until(lambda: held(first), "the first commit held: no pull request brought it", alive=alive)
            approve_and_apply(first)

            git(dev.work, "checkout", "-q", "-b", "topic-1")
            head = push_pull(dev, 1, TWO_PARTS.replace('b = "B"', 'b = "B2"'), "b two")
            forge.add_pull_request(1, head, head_branch="topic-1")
            send(port, "pull_request", pull_request_event("opened", 1, head, url), "r1")
            wait_until(lambda: any(state == "success" for state, _ in states(forge, head)), "the preview", alive=alive)

            git(dev.work, "checkout", "-q", "main")
            (dev.work / "deployment.nix").write_text(TWO_PARTS.replace('a = "A"', 'a = "A2"'))
            git(dev.work, "commit", "-q", "-am", "a two")
            git(dev.work, "push", "-q", "origin", "HEAD:refs/heads/main")
            direct = git(dev.work, "rev-parse", "HEAD").strip()
            send(port, "push", {"ref": "refs/heads/main", "after": direct, "repository": {"git_url": url}}, "r2")
            wait_until(lambda: held(direct), "the direct push held", alive=alive)
            approve_and_apply(direct)

            git(dev.work, "merge", "-q", "--no-ff", "-m", "Merge pull request #1", "topic-1")
            git(dev.work, "push", "-q", "origin", "HEAD:refs/heads/main")
            merge = git(dev.work, "rev-parse", "HEAD").strip()
            send(port, "push", {"ref": "refs/heads/main", "after": merge, "repository": {"git_url": url}}, "r3")
            wait_until(lambda: held(merge), "the stale merge held", alive=alive)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/deployments/web", timeout=10) as response:
                last = json.loads(response.read())["lastRun"]
            assert last["outcome"] == "held" and "not the plan last shown on pull request #1" in last["message"]
            approve_and_apply(merge)
            wait_until(lambda: ("success", "Applied: +0 ~1 -0") in states(forge, merge), "the merge applied")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
