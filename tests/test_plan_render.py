"""Plans shown to people and machines."""

from __future__ import annotations

import json

from controller.model import UNKNOWN, DesiredResource, ResourceState
from controller.plan_render import plan_json, render_plan
from controller.planning import plan


def sample() -> object:
    return plan(
        {
            "a": DesiredResource("a", "local.file", {"name": "a", "contents": UNKNOWN}),
            "b": DesiredResource("b", "local.file", {"name": "b2", "contents": "same"}),
            "c": DesiredResource("c", "local.memo", {"initialize_with": 1}),
        },
        {
            "b": ResourceState("b", "local.file", {"name": "b", "contents": "same"}, {}, ("c",)),
            "c": ResourceState("c", "local.memo", {"initialize_with": 1}, {"value": 1}),
            "d": ResourceState("d", "local.file", {"name": "d"}, {}),
        },
    )


def test_text_plan() -> None:
    text = render_plan(sample())  # type: ignore[arg-type]
    assert "  # a will be created (not in state)" in text
    assert "+ contents = (known after apply)" in text
    assert '~ name = "b" -> "b2"' in text
    assert "(1 unchanged input hidden)" in text
    assert "  # d will be deleted" in text
    assert "Plan: 1 to create, 1 to update, 0 to replace, 1 to delete. 1 unchanged." in text


def test_json_plan_round_trips_through_json() -> None:
    document = plan_json(sample(), deployment="web", source_commit="abc", dependencies={"a": frozenset({"c"})})  # type: ignore[arg-type]
    document = json.loads(json.dumps(document))
    changes = {c["path"]: c for c in document["changes"]}
    assert document["formatVersion"] == 1 and document["deployment"] == "web"
    assert changes["a"]["action"] == "create"
    assert changes["a"]["after"] == {"name": "a"}
    assert changes["a"]["afterUnknown"] == ["contents"]
    assert changes["a"]["dependsOn"] == ["c"]
    assert changes["b"]["dependsOn"] == ["c"], "falls back to the dependencies recorded in state"
    assert changes["b"]["fields"] == [{"field": "name", "before": "b", "after": "b2"}]
    assert changes["d"]["after"] is None
    assert document["summary"] == {"create": 1, "update": 1, "replace": 0, "delete": 1, "noop": 1}


def test_no_changes_text() -> None:
    assert render_plan(plan({}, {})).startswith("No changes.")
