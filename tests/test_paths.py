"""Member paths (controller/paths.py and the harness's `join`), stateless resources and structure that depends on
outputs in planning: properties over generated names, and the harness against the Python side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Checkout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import paths, planning
from controller.errors import UserError
from controller.model import UNKNOWN, DesiredResource, ResourceState
from controller.planning import Action
from controller.state_branch import record_location

names = st.text(min_size=0, max_size=12)
name_lists = st.lists(names, min_size=1, max_size=5)


@given(name_lists)
def test_render_then_parse_gives_the_names_back(names: list[str]) -> None:
    assert paths.parse(paths.render(names)) == tuple(names)


@given(name_lists, name_lists)
def test_distinct_name_lists_are_written_differently(one: list[str], other: list[str]) -> None:
    assert (paths.render(one) == paths.render(other)) == (one == other)


@given(name_lists, name_lists)
def test_within_is_a_prefix_of_names(path: list[str], prefix: list[str]) -> None:
    expected = path[: len(prefix)] == prefix
    assert paths.within(paths.render(path), paths.render(prefix)) == expected


@given(name_lists)
def test_record_file_names_are_plain_and_distinct(names: list[str]) -> None:
    directory, name = record_location(paths.render(names))
    assert "/" not in name and "\0" not in name and len(directory) == 2


def test_identifiers_are_bare_and_others_quoted() -> None:
    assert paths.render(["myDeployment", "file.txt"]) == 'myDeployment."file.txt"'
    assert paths.render(["a", 'say "hi"\n']) == 'a."say \\"hi\\"\\n"'
    assert paths.render(["x-1", "_y'"]) == "x-1._y'"
    for bad in ('a."b', "a..b", "a.b c", 'a."b"c', "1a"):
        with pytest.raises(UserError):
            paths.parse(bad)


nix_names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12)  # no NUL


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(nix_names, min_size=1, max_size=4))
def test_the_harness_writes_paths_as_python_does(tmp_path: Path, names: list[str]) -> None:
    """A deployment whose members are nested under these names: the harness's path is the one Python writes."""
    leaf = "{ type = providers.local.memo; inputs.initialize_with = 1; }"
    value = leaf
    for name in reversed(names[1:]):
        value = f"{{ members.{nix_string(name)} = {value}; }}"
    text = f"{{ providers, ... }}: {{ members.{nix_string(names[0])} = {value}; }}"
    (tmp_path / "deployment.nix").write_text(text)
    from controller.evaluation import NixEvaluator

    found = NixEvaluator(tmp_path / "deployment.nix").evaluate({})
    assert list(found.resources) == [paths.render(names)]


def nix_string(text: str) -> str:
    """``text`` as a Nix string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def memo(path: str, value: object = 1, *, stateless: bool = False) -> DesiredResource:
    return DesiredResource(path, "p.t", {"v": value}, stateless=stateless)


def record(path: str, value: object = 1, *, stateless: bool = False) -> ResourceState:
    return ResourceState(path, "p.t", {"v": value}, {}, stateless=stateless)


def test_a_stateless_resource_is_made_again_on_every_plan_unless_made_in_this_apply() -> None:
    desired = {"s": memo("s", stateless=True), "k": memo("k")}
    state = {"s": record("s", stateless=True), "k": record("k")}
    changes = planning.plan(desired, state).by_path()
    assert changes["s"].action is Action.UPDATE and changes["s"].reason == "stateless: made again on every apply"
    assert changes["k"].action is Action.NOOP
    again = planning.plan(desired, state, made={"s"}).by_path()
    assert again["s"].action is Action.NOOP
    changed = planning.plan({**desired, "s": memo("s", 2, stateless=True)}, state, made={"s"}).by_path()
    assert changed["s"].action is Action.UPDATE, "made in this apply, but its inputs changed since"


def test_what_state_holds_under_an_unknown_structure_is_kept() -> None:
    state = {"a.x": record("a.x"), 'a."y.z"': record('a."y.z"'), "b": record("b")}
    plan = planning.plan({"a.sel": memo("a.sel")}, state, structural={"a.kids": ["a.sel"], 'a."y.z"': ["a.sel"]})
    changes = plan.by_path()
    assert changes["a.x"].action is Action.DELETE
    assert changes['a."y.z"'].action is Action.NOOP and "known after apply of a.sel" in changes['a."y.z"'].reason
    assert changes["b"].action is Action.DELETE
    assert plan.structural == (('a."y.z"', ("a.sel",)), ("a.kids", ("a.sel",)))  # sorted by path


def test_a_stateless_resource_whose_inputs_are_unknown_is_still_made_again() -> None:
    desired = {"s": DesiredResource("s", "p.t", {"v": UNKNOWN}, stateless=True)}
    change = planning.plan(desired, {"s": record("s", stateless=True)}).by_path()["s"]
    assert change.action is Action.UPDATE and change.fields[0].after is UNKNOWN


def test_the_cli_refuses_a_member_path_it_cannot_read(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "controller", "plan", 'a."b', "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "closing quote" in done.stderr and "Traceback" not in done.stderr


def test_a_resource_that_now_keeps_state_is_recorded_again_without_a_call() -> None:
    change = planning.plan({"s": memo("s")}, {"s": record("s", stateless=True)}).by_path()["s"]
    assert change.action is Action.UPDATE and change.reason == "it now keeps state; only state is written"
    assert change.fields == ()


STRUCTURE = """{ members, providers, ... }: {
  members.sel = { type = providers.local.memo; inputs.initialize_with = 1; };
  members.g = { members = if members.sel.outputs.value == 1 then { x = { type = providers.local.memo;
    inputs.initialize_with = 2; }; } else { }; };
}
"""


@pytest.mark.parametrize("member", [None, "g"])
def test_a_member_set_that_reads_an_unknown_output_is_known_after_apply(tmp_path: Path, member: str | None) -> None:
    from controller.evaluation import NixEvaluator

    (tmp_path / "deployment.nix").write_text(STRUCTURE)
    evaluator = NixEvaluator(tmp_path / "deployment.nix", member=member)
    found = evaluator.evaluate({})
    assert found.structural == {"g": frozenset({"sel"})}
    assert set(found.resources) == ({"sel"} if member is None else set())
    known = evaluator.evaluate({"sel": {"value": 1}})
    assert known.structural == {} and "g.x" in known.resources


def test_a_member_path_plans_only_its_members_and_leaves_the_rest_alone(checkout: Checkout) -> None:
    checkout.deploy(
        """{ members, providers, ... }: {
          members.store = { type = providers.local.state_file; inputs.name = "s.json"; };
          members.sub.members."a.b" = {
            type = providers.local.memo; state = members.store; inputs.initialize_with = 1;
          };
          members.other = { type = providers.local.memo; inputs.initialize_with = 2; };
        }"""
    )
    plan = json.loads(checkout.ok("plan", "sub", "--json").stdout)  # its state handler is outside, not applied yet
    assert [c["path"] for c in plan["changes"]] == ['sub."a.b"']
    checkout.ok("apply", 'sub."a.b"', "--yes")
    assert set(checkout.state()) == {'sub."a.b"'}
    assert checkout.state()['sub."a.b"']["stateHandler"] == "store"
    checkout.ok("apply", "--yes")
    assert set(checkout.state()) == {"store", 'sub."a.b"', "other"}
    checkout.ok("destroy", "other", "--yes")
    assert set(checkout.state()) == {"store", 'sub."a.b"'}, "destroy of a member deletes only what is under it"
