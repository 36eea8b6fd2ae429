"""`nixgitops state rm` and `state mv`: state surgery through the real command line, in a real Git repository.

Each changes only what state records (no provider is called), as exactly one commit on the state branch, and is
refused while a run holds the deployment's lock. The decisions themselves (``remove``, ``move``) are pure and
tested here without I/O too.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Checkout, assert_clean_error

from controller.errors import UserError
from controller.model import ResourceState
from controller.state_surgery import move, remove

CHAIN = """
{ members, providers, ... }:
{
  members.greeting = { type = providers.local.exec; inputs = { executable = "echo"; args = [ "hi" ]; }; };
  members.GREETING_READER = {
    type = providers.local.file;
    inputs = { name = "motd.txt"; contents = members.greeting.outputs.stdout; };
  };
  members.site = {
    members.index = { type = providers.local.file; inputs = { name = "index.html"; contents = "<h1>x</h1>"; }; };
    members.about = { type = providers.local.memo; inputs.initialize_with = "about"; };
  };
  members.memo = { type = providers.local.memo; inputs.initialize_with = "MEMO"; };
}
"""


def deployment(reader: str = "motd", site: str = "site", greeting: str = "greeting") -> str:
    text = CHAIN.replace("GREETING_READER", reader).replace("members.site =", f"members.{site} =")
    return text.replace("members.greeting", f"members.{greeting}")


@pytest.fixture
def applied(checkout: Checkout) -> Checkout:
    checkout.deploy(deployment())
    checkout.ok("apply", "--yes")
    return checkout


@contextmanager
def lock_held(checkout: Checkout) -> Iterator[None]:
    """Hold the lock that `apply` and `destroy` hold, as a run in progress does."""
    lock = checkout.path / ".git" / "nixgitops" / "default.lock"
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write("pid 4242\n")
        handle.flush()
        yield


def test_rm_forgets_without_calling_the_provider_in_one_commit(applied: Checkout) -> None:
    commits = len(applied.state_log())
    done = applied.ok("state", "rm", "motd", "memo", "--json")
    document = json.loads(done.stdout)
    assert document["deployment"] == "default" and document["stateBranch"] == "nixgitops/state"
    assert document["removed"] == [{"path": "motd", "type": "local.file"}, {"path": "memo", "type": "local.memo"}]
    assert document["unsettledDropped"] == []
    log = applied.state_log()
    assert len(log) == commits + 1, "exactly one state commit"
    assert log[0].startswith("State rm: 2 resources forgotten (motd, memo)")
    assert "rm motd (local.file)" in log[0] and "No provider was called" in log[0]
    assert document["commit"] and len(document["commit"]) == 40
    assert set(applied.state()) == {"greeting", "site.index", "site.about"}
    assert (applied.path / "motd.txt").read_text() == "hi\n", "the file itself is untouched"
    plan = applied.plan()
    assert plan["motd"]["action"] == "create" and plan["memo"]["action"] == "create"


def test_rm_of_a_composite_removes_its_members_and_text_output_names_them(applied: Checkout) -> None:
    done = applied.ok("state", "rm", "site")
    assert "rm site.about (local.memo)" in done.stdout and "rm site.index (local.file)" in done.stdout
    assert "State: commit" in done.stdout
    assert set(applied.state()) == {"greeting", "motd", "memo"}


def test_rm_of_an_unknown_path_names_it_and_close_matches(applied: Checkout) -> None:
    commits = len(applied.state_log())
    done = applied.run("state", "rm", "memo", "mtod")
    assert_clean_error(done, "No resource 'mtod' in the state of deployment 'default'", "Close matches: motd")
    assert set(applied.state()) == {"greeting", "motd", "memo", "site.index", "site.about"}, "nothing removed"
    assert len(applied.state_log()) == commits
    assert_clean_error(applied.run("state", "mv", "sitte", "web"), "No resource 'sitte'", "Close matches: site")


def test_mv_keeps_a_renamed_member_instead_of_destroying_it(applied: Checkout) -> None:
    commits = len(applied.state_log())
    before = applied.state()
    done = applied.ok("state", "mv", "greeting", "hello", "--json")
    document = json.loads(done.stdout)
    assert document["moved"] == [{"from": "greeting", "to": "hello"}]
    assert document["dependenciesUpdated"] == ["motd"]
    log = applied.state_log()
    assert len(log) == commits + 1 and log[0].startswith("State mv: greeting -> hello")
    state = applied.state()
    assert "greeting" not in state
    assert state["hello"]["path"] == "hello" and state["hello"]["outputs"] == before["greeting"]["outputs"]
    assert state["motd"]["dependencies"] == ["hello"], "its readers now name the new path"
    # The deployment renames it too: nothing to destroy, nothing to create.
    applied.deploy(deployment(greeting="hello"))
    assert {c["action"] for c in applied.plan().values()} == {"noop"}


def test_mv_of_a_composite_moves_every_member(applied: Checkout) -> None:
    done = applied.ok("state", "mv", "site", "web")
    assert "mv site.about -> web.about" in done.stdout and "mv site.index -> web.index" in done.stdout
    assert {"web.index", "web.about"} <= set(applied.state()) and "site.index" not in applied.state()
    assert applied.state_log()[0].startswith("State mv: site -> web (2 resources)")
    applied.deploy(deployment(site="web"))
    assert {c["action"] for c in applied.plan().values()} == {"noop"}


def test_mv_never_overwrites(applied: Checkout) -> None:
    commits = len(applied.state_log())
    assert_clean_error(applied.run("state", "mv", "memo", "motd"), "'motd' is already in state")
    assert_clean_error(applied.run("state", "mv", "memo", "site"), "'site.about' is already in state")
    assert_clean_error(applied.run("state", "mv", "memo", "not a path"), "is not a plain name")
    assert len(applied.state_log()) == commits


def test_rm_and_mv_are_refused_while_a_run_holds_the_lock(applied: Checkout) -> None:
    commits = len(applied.state_log())
    with lock_held(applied):
        assert_clean_error(applied.run("state", "rm", "memo"), "Another nixgitops run (pid 4242)")
        assert_clean_error(applied.run("state", "mv", "memo", "note"), "Another nixgitops run (pid 4242)")
    assert len(applied.state_log()) == commits
    assert "memo" in applied.state()
    applied.ok("state", "mv", "memo", "note")  # the lock is free again


# -- the decisions, without I/O ------------------------------------------------------------------------------


def record(path: str, *deps: str) -> ResourceState:
    return ResourceState(path, "local.memo", {"initialize_with": path}, {"value": path}, tuple(deps))


STATE = {
    "a.x": record("a.x"),
    "a.y": record("a.y", "a.x"),
    "b": record("b", "a.y"),
    "c": record("c", "b", "a.x"),
}


def test_move_renames_paths_and_every_dependency() -> None:
    surgery = move(STATE, "a", "z", deployment="d")
    assert surgery.deletes == {"a.x", "a.y"}
    assert set(surgery.upserts) == {"z.x", "z.y", "b", "c"}
    assert surgery.upserts["z.y"].dependencies == ("z.x",)
    assert surgery.upserts["c"].dependencies == ("b", "z.x")
    assert surgery.upserts["z.x"].outputs == {"value": "a.x"}


def test_move_refuses_what_the_journal_holds() -> None:
    with pytest.raises(UserError, match="not settled"):
        move(STATE, "b", "e", journaled={"b"}, deployment="d")


def test_remove_accepts_a_path_only_the_journal_knows() -> None:
    surgery = remove(STATE, ["ghost", "b"], journaled={"ghost", "b"}, deployment="d")
    assert surgery.deletes == {"b"} and surgery.forget == {"ghost", "b"}
    with pytest.raises(UserError, match="Close matches: b"):
        remove(STATE, ["bb"], deployment="d")


def test_a_path_is_never_confused_with_a_longer_one(tmp_path: Path) -> None:
    state = {"ab": record("ab"), "a.b": record("a.b")}
    assert remove(state, ["a"], deployment="d").deletes == {"a.b"}
    assert move(state, "a", "c", deployment="d").deletes == {"a.b"}
