"""A way out of every stuck state: a provider that fails a request by exiting, and an operation that cannot be
settled, stop only the resources they concern, never the rest of the run; `nixgitops state rm` forgets what is
known to be gone. Real provider processes (NixOps4's own local provider among them), real Git, the real command
line and the real controller.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

from conftest import NOTES_PROVIDER, Checkout, assert_clean_error, git, local_remote, nixops4_local
from gitserver import free_port

from controller.recovery import held_back


def nixops4_deployment(binary: Path, members: str) -> str:
    return (
        "{ members, providers, ... }: {\n"
        f'  providers.nix4 = {{ executable = "{binary}"; resourceTypes = [ "memo" "file" ]; }};\n'
        f"{members}\n}}\n"
    )


def journal(checkout: Checkout) -> list[dict[str, object]]:
    path = checkout.path / ".git" / "nixgitops" / "default.journal"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_resource_whose_provider_cannot_delete_is_forgotten_with_a_warning(checkout: Checkout) -> None:
    """NixOps4's local provider does not know destroyResourceRequest: it prints a parse error and exits. The
    resource is forgotten with a warning (docs/nixops4.md), so the deployment is never stuck on it."""
    binary = nixops4_local()
    keep = 'members.keep = { type = providers.nix4.memo; inputs.initialize_with = "K1"; };'
    gone = 'members.gone = { type = providers.nix4.memo; inputs.initialize_with = "G"; };'
    checkout.deploy(nixops4_deployment(binary, keep + "\n" + gone))
    checkout.ok("apply", "--yes")

    checkout.deploy(nixops4_deployment(binary, keep))
    done = checkout.ok("apply", "--yes")
    assert "gone: Deletion complete" in done.stdout
    assert "Warning: gone: forgotten, not deleted: provider 'nix4' cannot delete a 'memo'" in done.stderr
    assert set(checkout.state()) == {"keep"}
    assert journal(checkout) == [], "the delete is settled, not left in the journal"

    # The next apply has nothing left to do about it.
    checkout.deploy(nixops4_deployment(binary, keep.replace("K1", "K2")))
    done = checkout.ok("apply", "--yes")
    assert "keep: Update complete" in done.stdout, done.stdout + done.stderr
    assert "gone" not in done.stdout + done.stderr
    assert checkout.state()["keep"]["inputs"] == {"initialize_with": "K2"}


def test_a_delete_left_unsettled_in_the_journal_is_settled_as_failed(checkout: Checkout) -> None:
    """The journal an earlier version left behind (the delete kept as in flight) no longer blocks every run."""
    binary = nixops4_local()
    keep = 'members.keep = { type = providers.nix4.memo; inputs.initialize_with = "K1"; };'
    gone = 'members.gone = { type = providers.nix4.memo; inputs.initialize_with = "G"; };'
    checkout.deploy(nixops4_deployment(binary, keep + "\n" + gone))
    checkout.ok("apply", "--yes")
    record = checkout.state()["gone"]
    intent = {
        "kind": "intent",
        "id": 7,
        "path": "gone",
        "pid": 0,
        "record": None,
        "provider": {"name": "nix4", "executable": str(binary), "args": []},
        "message": {"destroyResourceRequest": {"resource": {"type": "memo", "inputProperties": record["inputs"]}}},
    }
    (checkout.path / ".git" / "nixgitops" / "default.journal").write_text(json.dumps(intent) + "\n")
    checkout.deploy(nixops4_deployment(binary, keep.replace("K1", "K2")))
    done = checkout.run("apply", "--yes")
    assert "Recovered: gone: a delete was in flight; repeating it FAILED, so the resource stays in state" in done.stdout
    assert "keep: Update complete" in done.stdout, done.stdout + done.stderr
    assert journal(checkout) == []
    # the plan that follows deletes it again, and the provider's refusal makes it forgotten
    assert "Warning: gone: forgotten, not deleted" in done.stderr
    assert set(checkout.state()) == {"keep"}


UNSETTLED = """{ members, providers, ... }: {
  providers.notes = { executable = "NOTES"; resourceTypes = [ "note" ]; };
  members.free = { type = providers.local.memo; inputs.initialize_with = "FREE"; };
  members.stuck = { type = providers.notes.note; inputs = { text = "s"; MODE }; };
  members.reader = { type = providers.local.memo; inputs.initialize_with = members.stuck.outputs.id; };
  members.far = { type = providers.local.memo; inputs.initialize_with = members.reader.outputs.value; };
  members.sibling = { type = providers.local.memo; inputs.initialize_with = members.free.outputs.value; };
  EXTRA
}
"""


def unsettled(free: str = "F1", mode: str = 'mode = "signal";', extra: str = "") -> str:
    text = UNSETTLED.replace("NOTES", str(NOTES_PROVIDER)).replace("FREE", free).replace("MODE", mode)
    return text.replace("EXTRA", extra)


def test_an_unsettled_operation_holds_back_only_its_resource_and_its_readers(checkout: Checkout) -> None:
    # The provider is killed by a signal while it creates `stuck`: whether it created it is not known.
    checkout.deploy(unsettled())
    done = checkout.run("apply", "--yes")
    assert_clean_error(done, "stuck: Provider 'notes'", "killed by signal SIGKILL", "not known")
    assert [e["path"] for e in journal(checkout)] == ["stuck"], "kept for recovery"

    # Recovery cannot settle it (the provider is killed again), and the rest of the run goes on.
    extra = 'members.other = { type = providers.local.memo; inputs.initialize_with = "O"; };'
    checkout.deploy(unsettled(free="F2", extra=extra))
    plan = checkout.run("plan")
    assert "Warning: stuck: skipped" in plan.stderr and "Warning: far: skipped" in plan.stderr
    done = checkout.run("apply", "--yes")
    assert done.returncode == 1
    assert "Recovered: stuck: an interrupted operation could not be settled yet" in done.stdout
    assert "stuck: skipped: its last operation, a createResourceRequest, could not be settled" in done.stdout
    assert "`nixgitops state rm stuck`" in done.stdout, "it says what to do"
    assert "reader: skipped: it reads stuck, whose last operation is not settled" in done.stdout
    assert "far: skipped: it reads stuck" in done.stdout, "readers of readers too"
    assert "free: Update complete" in done.stdout and "other: Creation complete" in done.stdout
    assert "Apply failed" in done.stdout and "Error: 3 resource(s) were skipped (far, reader, stuck)" in done.stderr
    state = checkout.state()
    assert set(state) == {"free", "sibling", "other"}
    assert state["free"]["inputs"] == {"initialize_with": "F2"} and state["sibling"]["outputs"] == {"value": "F1"}
    assert [e["path"] for e in journal(checkout)] == ["stuck"], "the journal keeps it"

    # Known to be gone: forget it. It was never in state, so only the journal changes.
    commits = len(checkout.state_log())
    dropped = json.loads(checkout.ok("state", "rm", "stuck", "--json").stdout)
    assert dropped["removed"] == [] and dropped["unsettledDropped"] == ["stuck"] and dropped["commit"] is None
    assert journal(checkout) == [] and len(checkout.state_log()) == commits
    checkout.deploy(unsettled(free="F2", mode="", extra=extra))
    checkout.ok("apply", "--yes")
    assert set(checkout.state()) == {"free", "sibling", "other", "stuck", "reader", "far"}


def test_held_back_follows_changing_readers_and_keeps_what_they_read() -> None:
    edges = {"r1": ["u"], "r2": ["r1"], "quiet": ["u"], "r3": ["quiet"], "src": [], "u": ["src"], "x": []}
    held = held_back({"u": "why"}, changing=["r1", "r2", "r3", "x"], edges=edges, deleting=["src"])
    assert held["u"] == "why"
    assert held["r1"].startswith("skipped: it reads u,") and held["r2"].startswith("skipped: it reads u,")
    assert "quiet" not in held and "r3" not in held, "a reader that does not change shields its readers"
    assert held["src"].startswith("not deleted: u reads it")
    assert "x" not in held


def test_the_controller_goes_on_around_an_unsettled_operation(tmp_path: Path) -> None:
    remote = local_remote(tmp_path, "web", unsettled())
    work = tmp_path / "web.src"
    config = tmp_path / "nixgitops.toml"
    config.write_text(
        f'[controller]\ndata_dir = "{tmp_path / "data"}"\n\n[server]\nlisten = "127.0.0.1:{free_port()}"\n\n'
        f'[deployments.web]\nrepository = "{remote}"\ninterval = "1m"\n'
    )

    def nixgitops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def push(text: str) -> None:
        (work / "deployment.nix").write_text(text)
        git(work, "commit", "-qam", "change")
        git(work, "push", "-q", str(remote), "main")

    def remote_state() -> set[str]:
        names = git(remote, "ls-tree", "-r", "--name-only", "nixgitops/state").split()
        return {Path(n).name.removesuffix(".json") for n in names if "/resources/" in n}

    assert nixgitops("reconcile", "web").returncode == 1
    extra = 'members.other = { type = providers.local.memo; inputs.initialize_with = "O"; };'
    push(unsettled(free="F2", extra=extra))
    done = nixgitops("reconcile", "web")
    assert done.returncode == 1
    assert "web: failed" in done.stdout
    assert "stuck: skipped: its last operation" in done.stderr and "nixgitops state rm stuck" in done.stderr
    assert remote_state() == {"free", "sibling", "other"}, "the rest was applied and pushed"

    lock = tmp_path / "data" / "locks" / "web.lock"
    with open(lock, "a") as handle:  # a reconcile in progress holds it
        fcntl.flock(handle, fcntl.LOCK_EX)
        refused = nixgitops("state", "rm", "stuck", "--deployment", "web")
        assert_clean_error(refused, "A reconcile of deployment 'web' is running")
    dropped = nixgitops("state", "rm", "stuck", "--deployment", "web", "--json")
    assert json.loads(dropped.stdout)["unsettledDropped"] == ["stuck"], dropped.stderr
    assert (tmp_path / "data" / "journal" / "web.journal").read_text() == ""

    push(unsettled(free="F2", mode="", extra=extra))
    done = nixgitops("reconcile", "web")
    assert done.returncode == 0, done.stdout + done.stderr
    assert remote_state() == {"free", "sibling", "other", "stuck", "reader", "far"}


def test_recovery_keeps_the_committed_record_of_a_replace_with_its_refreshed_edges(tmp_path: Path) -> None:
    """A crash between the state commit and the journal's clearing: folding the journal again must not put back
    the edges the record had before they were read again after the run (a replace: delete result, then create)."""
    from controller.journal import Journal
    from controller.model import ResourceState
    from controller.recovery import recover

    journaled = ResourceState("r", "local.memo", {"a": 1}, {"value": 1}, ("x",), rank=4)
    committed = ResourceState("r", "local.memo", {"a": 1}, {"value": 1}, ("x", "y"), rank=4, read=True)
    journal = Journal(tmp_path / "j")
    try:
        gone = journal.intent({"path": "r"})
        journal.result(gone, None, "r")
        made = journal.intent({"path": "r"})
        journal.result(made, journaled.to_json(), "r")
        state = {"r": committed}
        notes, unsettled = recover(journal, state, timeout=1)
    finally:
        journal.close()
    assert state["r"] == committed and not notes and not unsettled
