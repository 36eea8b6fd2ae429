"""Dependency graph helpers."""

from __future__ import annotations

from controller.graph import closure, describe_cycle, find_cycle, invert


def test_find_cycle_returns_every_node_on_it() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycle = find_cycle(edges)
    assert cycle is not None and sorted(cycle) == ["a", "b", "c"]
    text = describe_cycle(cycle)
    assert text.startswith(cycle[0]) and text.endswith(cycle[0])


def test_no_cycle_in_a_dag_and_self_loops_found() -> None:
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a"]


def test_deep_chain_does_not_recurse() -> None:
    edges = {f"n{i}": {f"n{i + 1}"} for i in range(50_000)}
    assert find_cycle(edges) is None
    edges["n50000"] = {"n0"}
    cycle = find_cycle(edges)
    assert cycle is not None and len(cycle) == 50_001


def test_closure_and_invert() -> None:
    edges = {"reader": {"source"}, "other": {"reader"}}
    assert invert(edges) == {"source": {"reader"}, "reader": {"other"}}
    assert closure({"source"}, invert(edges)) == {"source", "reader", "other"}
