"""The command-line contract, end to end: real Git, real nix-instantiate, real provider processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ONE_MEMO, Checkout, assert_clean_error, git

from controller.state_branch import record_location

CHAIN = """
{ members, providers, ... }:
{
  members.greeting = { type = providers.local.exec; inputs = { executable = "echo"; args = [ "GREETING" ]; }; };
  members.motd = {
    type = providers.local.file;
    inputs = { name = "motd.txt"; contents = members.greeting.outputs.stdout; };
  };
  members.site = {
    members.index = {
      type = providers.local.file;
      inputs = { name = "index.html"; contents = "<h1>${members.greeting.outputs.stdout}</h1>"; };
    };
  };
  members.memo = { type = providers.local.memo; inputs.initialize_with = "MEMO"; };
}
"""


def test_plan_apply_noop_update_destroy(checkout: Checkout) -> None:
    checkout.deploy(CHAIN.replace("GREETING", "hello"))
    plan = checkout.plan()
    assert {p: c["action"] for p, c in plan.items()} == {
        "greeting": "create",
        "memo": "create",
        "motd": "create",
        "site.index": "create",
    }
    assert plan["motd"]["type"] == "local.file"
    assert plan["motd"]["afterUnknown"] == ["contents"]
    assert plan["motd"]["dependsOn"] == ["greeting"]

    applied = checkout.ok("apply", "--yes")
    assert "Apply complete!" in applied.stdout
    assert (checkout.path / "motd.txt").read_text() == "hello\n"
    assert (checkout.path / "index.html").read_text() == "<h1>hello\n</h1>"

    state = checkout.state()
    assert set(state) == {"greeting", "memo", "motd", "site.index"}
    assert state["greeting"]["outputs"] == {"stdout": "hello\n"}
    assert state["motd"]["inputs"] == {"name": "motd.txt", "contents": "hello\n"}
    assert state["motd"]["dependencies"] == ["greeting"]
    assert state["memo"]["outputs"] == {"value": "MEMO"}

    # Nothing changed: a plan of all no-ops, and an apply that commits nothing.
    assert {c["action"] for c in checkout.plan().values()} == {"noop"}
    commits = len(checkout.state_log())
    assert "No changes" in checkout.ok("apply", "--yes").stdout
    assert len(checkout.state_log()) == commits

    # A change upstream: its readers are shown as known after apply, then updated.
    source = checkout.deploy(CHAIN.replace("GREETING", "bonjour").replace('"MEMO"', '"OTHER"'))
    plan = checkout.plan()
    assert plan["greeting"]["action"] == "update"
    assert plan["greeting"]["fields"] == [{"field": "args", "before": ["hello"], "after": ["bonjour"]}]
    assert plan["motd"]["action"] == "update"
    assert plan["motd"]["afterUnknown"] == ["contents"]
    assert plan["memo"]["action"] == "update"
    checkout.ok("apply", "--yes")
    assert (checkout.path / "motd.txt").read_text() == "bonjour\n"
    assert checkout.state()["memo"]["outputs"] == {"value": "MEMO"}, "a memo keeps its first value"
    message = checkout.state_log()[0]
    assert message.startswith(f"Apply {source[:12]}: +0 ~4 -0")
    assert f"Source-Commit: {source}" in message

    destroyed = checkout.ok("destroy", "--yes")
    assert "Destroy complete!" in destroyed.stdout
    assert checkout.state() == {}
    assert not (checkout.path / "motd.txt").exists()
    # Deletes run in reverse dependency order: the readers of greeting before greeting.
    order = [line.split(":")[0] for line in destroyed.stdout.splitlines() if line.endswith("Deleting...")]
    assert order.index("motd") < order.index("greeting")
    assert order.index("site.index") < order.index("greeting")


def test_removed_resource_is_deleted_and_work_tree_untouched(checkout: Checkout) -> None:
    checkout.deploy(CHAIN.replace("GREETING", "hi"))
    checkout.ok("apply", "--yes")
    checkout.deploy(
        """
        { members, providers, ... }:
        { members.greeting = { type = providers.local.exec; inputs = { executable = "echo"; args = [ "hi" ]; }; }; }
        """
    )
    plan = checkout.plan()
    assert plan["motd"]["action"] == "delete"
    assert plan["greeting"]["action"] == "noop"
    checkout.ok("apply", "--yes")
    assert set(checkout.state()) == {"greeting"}
    assert not (checkout.path / "index.html").exists()
    assert git(checkout.path, "status", "--porcelain") == ""
    assert git(checkout.path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"


def test_replace_when_type_changes(checkout: Checkout) -> None:
    checkout.deploy(
        """
        { members, providers, ... }:
        { members.x = { type = providers.local.file; inputs = { name = "x.txt"; contents = "x"; }; }; }
        """
    )
    checkout.ok("apply", "--yes")
    checkout.deploy(
        """
        { members, providers, ... }:
        { members.x = { type = providers.local.memo; inputs = { initialize_with = 1; }; }; }
        """
    )
    plan = checkout.plan()
    assert plan["x"]["action"] == "replace"
    assert "type changed" in plan["x"]["reason"]
    checkout.ok("apply", "--yes")
    assert not (checkout.path / "x.txt").exists()
    assert checkout.state()["x"]["type"] == "local.memo"


def test_prevent_destroy_refuses_delete_and_replace(checkout: Checkout) -> None:
    checkout.deploy(
        """
        { members, providers, ... }:
        { members.keep = { type = providers.local.file; inputs = { name = "k"; contents = "k"; };
                           lifecycle.preventDestroy = true; }; }
        """
    )
    checkout.ok("apply", "--yes")
    checkout.deploy("{ members, providers, ... }: { }")
    assert_clean_error(checkout.run("plan"), "keep", "preventDestroy")
    assert_clean_error(checkout.run("apply", "--yes"), "keep", "preventDestroy")
    assert_clean_error(checkout.run("destroy", "--yes"), "keep")
    assert (checkout.path / "k").exists()
    checkout.deploy(
        """
        { members, providers, ... }:
        { members.keep = { type = providers.local.memo; inputs.initialize_with = 1;
                           lifecycle.preventDestroy = true; }; }
        """
    )
    assert_clean_error(checkout.run("plan"), "keep would be replaced")
    assert set(checkout.state()) == {"keep"}


# Values that evaluate and declare nothing: a function or an attribute set without members, empty composites.
EMPTY = ["{ ... }: { }", "{ }", "{ members, ... }: { members.staging.members = { }; providers = { }; }"]


@pytest.mark.parametrize("empty", EMPTY, ids=["function", "attrset", "empty-composite"])
def test_a_deployment_that_declares_nothing_does_not_delete_everything(checkout: Checkout, empty: str) -> None:
    checkout.deploy(CHAIN.replace("GREETING", "hi"))
    checkout.ok("apply", "--yes")
    before, log = checkout.state(), checkout.state_log()
    source = checkout.deploy(empty)
    for args in (["plan"], ["plan", "--json"], ["apply", "--yes"]):
        done = checkout.run(*args)
        assert_clean_error(
            done,
            f"deployment.nix (commit {source[:12]}) declares no resources",
            "every resource in state (4 resources)",
            "--allow-empty",
            "allow_empty = true",
            "`nixgitops destroy`",
        )
        assert "Deleting" not in done.stdout, done.stdout
    assert checkout.state() == before
    assert checkout.state_log() == log, "no state commit"
    assert (checkout.path / "motd.txt").exists(), "no provider call"

    document = json.loads(checkout.ok("plan", "--json", "--allow-empty").stdout)
    assert {c["path"]: c["action"] for c in document["changes"]} == dict.fromkeys(before, "delete")
    applied = checkout.ok("apply", "--yes", "--allow-empty")
    assert "4 deleted" in applied.stdout
    assert checkout.state() == {}
    assert not (checkout.path / "motd.txt").exists()
    assert checkout.state_log()[0].startswith(f"Apply {source[:12]}: +0 ~0 -4")
    assert "No changes" in checkout.ok("apply", "--yes").stdout, "nothing in state: nothing to refuse"


def test_a_flake_is_not_applied_as_an_empty_deployment(checkout: Checkout) -> None:
    checkout.deploy(CHAIN.replace("GREETING", "hi"))
    checkout.ok("apply", "--yes")
    before, log = checkout.state(), checkout.state_log()
    checkout.deploy('{ description = "infrastructure"; outputs = { self }: { nixgitops = { }; }; }')
    for args in (["plan"], ["apply", "--yes"]):  # refused as a flake, or else as a deployment that declares nothing
        done = checkout.run(*args)
        assert_clean_error(done, "deployment.nix")
        assert "Deleting" not in done.stdout, done.stdout
    assert checkout.state() == before and checkout.state_log() == log
    assert (checkout.path / "motd.txt").exists()


def test_destroy_needs_no_allow_empty(checkout: Checkout) -> None:
    checkout.deploy(CHAIN.replace("GREETING", "hi"))
    checkout.ok("apply", "--yes")
    checkout.deploy("{ ... }: { }")
    assert_clean_error(checkout.run("apply", "--yes"), "--allow-empty")
    assert {c["action"] for c in json.loads(checkout.ok("plan", "--destroy", "--json").stdout)["changes"]} == {"delete"}
    assert "Destroy complete!" in checkout.ok("destroy", "--yes").stdout
    assert checkout.state() == {}
    assert not (checkout.path / "motd.txt").exists()


def test_apply_requires_yes_without_a_terminal(checkout: Checkout) -> None:
    checkout.deploy(CHAIN)
    assert_clean_error(checkout.run("apply"), "--yes")
    assert checkout.state() == {}


def test_human_plan_reads_like_terraform(checkout: Checkout) -> None:
    checkout.deploy(CHAIN.replace("GREETING", "hi"))
    out = checkout.ok("plan").stdout
    assert "# motd will be created" in out
    assert "+ contents = (known after apply)" in out
    assert "Plan: 4 to create, 0 to update, 0 to replace, 0 to delete." in out


def test_custom_provider_in_shell_with_pooled_processes(
    checkout: Checkout, notes_provider: Callable[[], str], notes_log: Path
) -> None:
    notes = "\n".join(f'  members.n{i} = {{ type = providers.notes.note; inputs.text = "t{i}"; }};' for i in range(12))
    checkout.deploy(
        f"""
{{ members, providers, ... }}:
{{
  {notes_provider()}
{notes}
  members.last = {{ type = providers.notes.note; inputs.text = members.n0.outputs.id; }};
}}
"""
    )
    checkout.ok("apply", "--yes", "--parallelism", "3")
    state = checkout.state()
    assert len(state) == 13
    assert state["last"]["inputs"]["text"] == state["n0"]["outputs"]["id"]
    pids = {line.split(" ", 1)[0] for line in notes_log.read_text().splitlines()}
    assert 1 <= len(pids) <= 3, f"expected a pool of at most 3 processes, saw {len(pids)}"


def test_state_list_and_show(checkout: Checkout) -> None:
    checkout.deploy(CHAIN.replace("GREETING", "x"))
    checkout.ok("apply", "--yes")
    listed = checkout.ok("state", "list").stdout.split()
    assert "motd" in listed and "local.file" in listed
    shown = json.loads(checkout.ok("state", "show", "motd").stdout)
    assert shown["path"] == "motd" and shown["outputs"] == {}
    assert_clean_error(checkout.run("state", "show", "nope"), "nope")


def test_options_dir_file_and_state_branch(checkout: Checkout, tmp_path: Path) -> None:
    (checkout.path / "deploy").mkdir()
    checkout.write(
        "{ members, providers, ... }: { members.a = { type = providers.local.memo; inputs.initialize_with = 1; }; }",
        "deploy/prod.nix",
    )
    checkout.commit()
    done = checkout.run("apply", "--yes", "--dir", "deploy", "--file", "prod.nix", "--state-branch", "ops/state")
    assert done.returncode == 0, done.stderr
    assert "default/resources/{}/{}".format(*record_location("a")) in git(
        checkout.path, "ls-tree", "-r", "--name-only", "ops/state"
    )


def test_a_second_apply_waits_for_the_lock(checkout: Checkout) -> None:
    import fcntl

    checkout.deploy(CHAIN)
    lock = checkout.path / ".git" / "nixgitops" / "default.lock"
    lock.parent.mkdir()
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("pid 4242\n")
        handle.flush()
        assert_clean_error(checkout.run("apply", "--yes"), "Another nixgitops run (pid 4242)")
    assert checkout.state() == {}
    checkout.ok("apply", "--yes")


def test_uncommitted_changes_are_flagged(checkout: Checkout) -> None:
    checkout.deploy(CHAIN)
    checkout.write(CHAIN.replace("GREETING", "edited"))
    done = checkout.ok("apply", "--yes")
    assert "uncommitted changes" in done.stderr
    assert "Source-Dirty: true" in checkout.state_log()[0]


def test_protection_can_be_turned_on_and_off_without_input_changes(checkout: Checkout) -> None:
    plain = (
        "{ members, providers, ... }: { members.db = { type = providers.local.memo; inputs.initialize_with = 1; LC }; }"
    )
    checkout.deploy(plain.replace("LC", ""))
    checkout.ok("apply", "--yes")
    checkout.deploy(plain.replace("LC", "lifecycle.preventDestroy = true;"))
    assert checkout.plan()["db"]["action"] == "update"
    checkout.ok("apply", "--yes")
    assert checkout.state()["db"]["preventDestroy"] is True
    assert_clean_error(checkout.run("destroy", "--yes"), "preventDestroy")
    checkout.deploy(plain.replace("LC", "lifecycle.preventDestroy = false;"))
    checkout.ok("apply", "--yes")
    checkout.ok("destroy", "--yes")
    assert checkout.state() == {}


def test_invalid_deployment_name_is_refused_before_anything_runs(checkout: Checkout) -> None:
    checkout.deploy(CHAIN)
    for name in ("a/b", "..", ""):
        assert_clean_error(checkout.run("apply", "--yes", "--deployment", name), "not a valid deployment name")
    assert not (checkout.path / "motd.txt").exists()


def test_sigterm_records_what_completed(checkout: Checkout, notes_provider: Callable[[], str]) -> None:
    import signal
    import subprocess
    import sys

    gate = checkout.path / "gate"
    checkout.deploy(
        "{ members, providers, ... }: { "
        + notes_provider()
        + " members.fast = { type = providers.local.memo; inputs.initialize_with = 1; };"
        + " members.slow = { type = providers.notes.note;"
        + f' inputs = {{ text = "s"; mode = "gate"; gate = "{gate}"; }}; }}; }}'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "apply", "--yes"],
        cwd=checkout.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # bounded: the provider gives up waiting on its gate after 30 s
        seen.append(line)
        if "fast: Creation complete" in "".join(seen) and "slow: Creating..." in "".join(seen):
            break
    proc.send_signal(signal.SIGTERM)
    gate.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "slow: interrupted; waiting" in out
    assert set(checkout.state()) == {"fast", "slow"}


def test_a_reader_that_leaves_early_gets_no_traceback(checkout: Checkout, tmp_path: Path) -> None:
    """`nixgitops state list | head -1`: once the reader has gone (EPIPE), the rest of the output is discarded
    quietly and the command finishes with its own status (0 here): no traceback, no 70, 120 or 141."""
    import os
    import subprocess
    import sys

    from gitserver import free_port

    checkout.deploy(CHAIN.replace("GREETING", "x"))
    checkout.ok("apply", "--yes")
    config = tmp_path / "nixgitops.toml"
    config.write_text(
        f'[controller]\ndata_dir = "{tmp_path / "data"}"\n\n[server]\nlisten = "127.0.0.1:{free_port()}"\n\n'
        f'[deployments.web]\nrepository = "{checkout.path}"\n'
    )
    for args in (["state", "list"], ["state", "list", "--json"], ["plan"], ["status", "--config", str(config)]):
        read, write = os.pipe()
        os.close(read)  # the reader has gone before the first line is written: every write meets EPIPE
        try:
            done = subprocess.run(
                [sys.executable, "-m", "controller", *args],
                cwd=checkout.path,
                stdout=write,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=120,
            )
        finally:
            os.close(write)
        assert done.returncode == 0, (args, done.stderr)
        for needle in ("Traceback", "BrokenPipe", "Exception ignored", "bug in nixgitops"):
            assert needle not in done.stderr, (args, done.stderr)


def test_a_plan_during_an_apply_does_not_call_its_operations_stuck(checkout: Checkout) -> None:
    """The journal of a run that holds the lock has operations in flight, not unsettled ones."""
    import fcntl
    import json as _json

    checkout.deploy(ONE_MEMO)
    journal = checkout.path / ".git" / "nixgitops" / "default.journal"
    journal.parent.mkdir(parents=True, exist_ok=True)
    intent = {"kind": "intent", "id": 1, "path": "m", "pid": 0, "message": {}, "record": None}
    intent["provider"] = {"name": "local", "executable": "x", "args": []}
    journal.write_text(_json.dumps(intent) + "\n")
    with open(checkout.path / ".git" / "nixgitops" / "default.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running apply holds it
        done = checkout.ok("plan")
    assert "another nixgitops run is applying" in done.stderr
    assert "not settled" not in done.stdout + done.stderr and "m will be created" in done.stdout
