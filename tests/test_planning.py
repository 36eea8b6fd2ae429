"""Planning is pure: desired resources and state in, a plan out."""

from __future__ import annotations

from typing import Any

import pytest

from controller.errors import PlanError
from controller.model import ABSENT, UNKNOWN, DesiredResource, ResourceState
from controller.planning import Action, FieldChange, changing, check_protected, decide, diff_fields, plan


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
