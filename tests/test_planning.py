"""Planning is pure: desired resources and state in, a plan out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import EmptyDeploymentError, PlanError, UserError
from controller.model import ABSENT, UNKNOWN, DesiredResource, ResourceState
from controller.planning import (
    Action,
    FieldChange,
    changing,
    check_empty_deployment,
    check_protected,
    decide,
    diff_fields,
    plan,
)


def desired(path: str, type_: str = "local.file", prevent: bool = False, **inputs: Any) -> DesiredResource:
    return DesiredResource(path, type_, inputs, prevent_destroy=prevent)


def recorded(path: str, type_: str = "local.file", prevent: bool = False, **inputs: Any) -> ResourceState:
    return ResourceState(path, type_, inputs, {"out": path}, prevent_destroy=prevent)


def test_create_update_noop_delete_replace() -> None:
    result = plan(
        {
            "new": desired("new", name="n"),
            "same": desired("same", name="s"),
            "changed": desired("changed", name="c2"),
            "retyped": desired("retyped", "local.memo", initialize_with=1),
        },
        {
            "same": recorded("same", name="s"),
            "changed": recorded("changed", name="c1"),
            "retyped": recorded("retyped", name="r"),
            "gone": recorded("gone", name="g"),
        },
    )
    actions = {c.path: c.action for c in result.changes}
    assert actions == {
        "changed": Action.UPDATE,
        "gone": Action.DELETE,
        "new": Action.CREATE,
        "retyped": Action.REPLACE,
        "same": Action.NOOP,
    }
    assert [c.path for c in result.changes] == sorted(actions), "changes are sorted by path"
    assert result.counts() == {"create": 1, "update": 1, "replace": 1, "delete": 1, "noop": 1}
    assert changing(result) == {"new", "changed", "retyped"}
    by_path = result.by_path()
    assert by_path["changed"].fields == (FieldChange("name", "c1", "c2"),)
    assert "type changed" in by_path["retyped"].reason


def test_provider_change_is_a_replace() -> None:
    change = decide(desired("x", "other.file", name="a"), recorded("x", "local.file", name="a"))
    assert change.action is Action.REPLACE
    assert "provider changed from 'local' to 'other'" in change.reason


def test_unknown_inputs_make_an_update_even_when_known_fields_match() -> None:
    change = decide(
        DesiredResource("x", "local.file", {"name": "a", "contents": UNKNOWN}), recorded("x", name="a", contents="b")
    )
    assert change.action is Action.UPDATE
    assert change.fields == (FieldChange("contents", "b", UNKNOWN),)
    assert "known only after apply" in change.reason


def test_inputs_not_known_at_all() -> None:
    change = decide(DesiredResource("x", "local.file", {}, inputs_known=False), recorded("x", name="a"))
    assert change.action is Action.UPDATE


def test_field_diff_sees_added_removed_and_type_changes() -> None:
    assert diff_fields({"a": 1, "b": 2, "c": 1}, {"a": 1, "c": True, "d": 4}) == (
        FieldChange("b", 2, ABSENT),
        FieldChange("c", 1, True),
        FieldChange("d", ABSENT, 4),
    )
    assert diff_fields({"n": {"x": [1, 2]}}, {"n": {"x": [1, 2]}}) == ()


def test_destroy_plans_every_resource_in_state() -> None:
    result = plan({"a": desired("a")}, {"a": recorded("a"), "b": recorded("b")}, destroy=True)
    assert {c.path: c.action for c in result.changes} == {"a": Action.DELETE, "b": Action.DELETE}


def test_prevent_destroy_refuses_delete() -> None:
    result = plan({}, {"db": recorded("db", prevent=True), "tmp": recorded("tmp")})
    with pytest.raises(PlanError) as error:
        check_protected(result)
    assert "db (local.file) would be deleted" in str(error.value)
    assert "tmp" not in str(error.value)
    assert "preventDestroy = false" in str(error.value)


def test_prevent_destroy_refuses_replace_but_allows_update() -> None:
    with pytest.raises(PlanError, match="db would be replaced"):
        check_protected(plan({"db": desired("db", "local.memo", prevent=True)}, {"db": recorded("db")}))
    check_protected(plan({"db": desired("db", prevent=True, name="b")}, {"db": recorded("db", prevent=True, name="a")}))


def test_no_changes() -> None:
    result = plan({"a": desired("a", name="a")}, {"a": recorded("a", name="a")})
    assert not result.has_changes
    assert changing(result) == frozenset()


def test_a_changed_prevent_destroy_alone_is_a_state_only_update() -> None:
    change = decide(desired("db", prevent=True, name="a"), recorded("db", name="a"))
    assert change.action is Action.UPDATE and change.fields == ()
    assert "only state is written" in change.reason


def test_a_deployment_that_declares_nothing_may_not_delete_everything() -> None:
    state = {p: recorded(p) for p in ("a", "b", "c")}
    result = plan({}, state)
    commit = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(EmptyDeploymentError) as error:
        check_empty_deployment(result, {}, "infra/flake.nix", commit=commit)
    assert isinstance(error.value, PlanError) and isinstance(error.value, UserError)
    message = str(error.value)
    assert message.startswith("infra/flake.nix (commit 0123456789ab) declares no resources")
    assert "every resource in state (3 resources)" in message
    assert "Nothing was changed" in message
    assert "--allow-empty" in message and "allow_empty = true" in message and "`nixgitops destroy`" in message
    with pytest.raises(EmptyDeploymentError, match=r"^deployment\.nix declares no resources.*\(1 resource\)"):
        check_empty_deployment(plan({}, {"a": recorded("a")}), {})
    check_empty_deployment(result, {}, allow=True)


def test_plans_that_declare_something_or_delete_nothing_are_not_refused() -> None:
    check_empty_deployment(plan({}, {}), {})  # nothing in state: nothing to delete
    renamed = plan({"new": desired("new")}, {"old": recorded("old")})
    assert renamed.counts()["delete"] == 1
    check_empty_deployment(renamed, {"new": desired("new")})


names = st.sets(st.text("abcxyz.", min_size=1, max_size=4), max_size=6)


@given(wanted=names, recorded_paths=names, allow=st.booleans())
def test_refused_exactly_when_nothing_is_declared_and_state_is_not_empty(
    wanted: set[str], recorded_paths: set[str], allow: bool
) -> None:
    desired_resources = {p: desired(p) for p in wanted}
    result = plan(desired_resources, {p: recorded(p) for p in recorded_paths})
    refused = not wanted and bool(recorded_paths) and not allow
    try:
        check_empty_deployment(result, desired_resources, allow=allow)
    except EmptyDeploymentError as error:
        assert refused, error
        assert f"({len(recorded_paths)} resource" in str(error)
    else:
        assert not refused
