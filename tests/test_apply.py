"""The executor's ordering, parallelism and failure handling, with small fakes of our own interfaces.

The fakes stand in for the evaluator (a function from known outputs to desired resources) and for the
provider pools (an object with ``call``); the real ones are exercised in test_cli and test_bad_input.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from controller import protocol
from controller.apply import Event, Executor
from controller.errors import ProviderError
from controller.evaluation import Evaluation
from controller.model import UNKNOWN, DesiredResource, ResourceState
from controller.planning import Action, out_of_order, plan, refreshed

Inputs = Callable[[Mapping[str, Mapping[str, Any]]], dict[str, Any]]


class FakeDeployment:
    """Resources whose inputs are functions of known outputs; a missing output makes a field unknown."""

    def __init__(self, resources: dict[str, tuple[Inputs, set[str]]]) -> None:
        self.resources = resources
        self.passes = 0

    def desired(self, path: str, known: Mapping[str, Mapping[str, Any]]) -> DesiredResource:
        compute, reads = self.resources[path]
        if reads <= known.keys():
            return DesiredResource(path, "fake.thing", compute(known), reads=frozenset(reads))
        missing = frozenset(reads - known.keys())
        return DesiredResource(path, "fake.thing", {"value": UNKNOWN}, blocked_by=missing, reads=missing)

    def evaluate(self, known: Mapping[str, Mapping[str, Any]], select: set[str] | None = None) -> Evaluation:
        self.passes += 1
        paths = self.resources if select is None else select
        return Evaluation({p: self.desired(p, known) for p in paths}, {})


class FakeProviders:
    """Records calls; ``behaviour`` may raise or block per request."""

    def __init__(self, behaviour: Callable[[str, dict[str, Any]], None] = lambda kind, body: None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.behaviour = behaviour
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0

    def call(
        self, provider: str, message: dict[str, Any], *, what: str, before_send: Any = None, hide: Any = ()
    ) -> dict[str, Any]:
        kind = protocol.kind_of(message)
        body = message[kind]
        path = what.split("'")[1]
        with self.lock:
            self.calls.append((kind, path))
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            self.behaviour(kind, body)
        finally:
            with self.lock:
                self.active -= 1
        if kind == protocol.DESTROY:
            return {}
        inputs = body["inputProperties"]
        return {"outputProperties": {"out": f"{path}:{inputs.get('value')}"}}


def run(
    deployment: FakeDeployment,
    providers: FakeProviders,
    state: dict[str, ResourceState] | None = None,
    parallelism: int = 8,
    destroy: bool = False,
) -> tuple[Executor, list[Event]]:
    state = state or {}
    known = {p: s.outputs for p, s in state.items()}
    desired = {} if destroy else deployment.evaluate(known).resources
    # Like compute_plan: anything that will change makes its readers wait.
    moving = {p for p, d in desired.items() if p not in state or d.inputs != state[p].inputs}
    desired = {} if destroy else deployment.evaluate({p: o for p, o in known.items() if p not in moving}).resources
    events: list[Event] = []
    executor = Executor(
        providers=providers,  # type: ignore[arg-type]
        evaluate=deployment.evaluate,
        parallelism=parallelism,
        report=events.append,
        base_rank=1 + max((s.rank for s in state.values()), default=0),
    )
    reorder = {} if destroy else out_of_order(desired, state)
    planned = plan(desired, state, destroy=destroy, reorder=reorder)
    executor.run(planned, desired, {}, state, refreshed(planned, desired, state))
    return executor, events


def const(value: str) -> tuple[Inputs, set[str]]:
    return (lambda known: {"value": value}), set()


def reads(source: str) -> tuple[Inputs, set[str]]:
    return (lambda known: {"value": known[source]["out"]}), {source}


def test_readers_wait_for_the_outputs_they_read() -> None:
    deployment = FakeDeployment({"a": const("1"), "b": reads("a"), "c": reads("b"), "d": const("2")})
    providers = FakeProviders()
    executor, _ = run(deployment, providers)
    order = [path for _, path in providers.calls]
    assert order.index("a") < order.index("b") < order.index("c")
    assert executor.state["c"].inputs == {"value": "b:a:1"}
    assert all(o.status == "ok" for o in executor.outcomes.values())


def test_independent_resources_run_in_parallel() -> None:
    barrier = threading.Barrier(4, timeout=30)
    providers = FakeProviders(lambda kind, body: barrier.wait() and None)
    executor, _ = run(FakeDeployment({f"r{i}": const(str(i)) for i in range(4)}), providers, parallelism=4)
    assert all(o.status == "ok" for o in executor.outcomes.values()), "four calls must be in flight at once"


def test_parallelism_is_a_bound() -> None:
    providers = FakeProviders()
    run(FakeDeployment({f"r{i}": const(str(i)) for i in range(30)}), providers, parallelism=3)
    assert len(providers.calls) == 30 and providers.most <= 3


def test_a_failure_skips_its_dependents_but_not_siblings() -> None:
    def fail_bad(kind: str, body: dict[str, Any]) -> None:
        if body.get("inputProperties", {}).get("value") == "bad":
            raise ProviderError("boom")

    deployment = FakeDeployment(
        {"bad": const("bad"), "reader": reads("bad"), "deep": reads("reader"), "ok": const("ok"), "okr": reads("ok")}
    )
    executor, _ = run(deployment, FakeProviders(fail_bad))
    status = {p: o.status for p, o in executor.outcomes.items()}
    assert status == {"bad": "failed", "reader": "skipped", "deep": "skipped", "ok": "ok", "okr": "ok"}
    assert "bad" in executor.outcomes["deep"].message
    assert set(executor.state) == {"ok", "okr"}


def test_unchanged_once_known_is_a_noop_without_a_call() -> None:
    state = {
        "a": ResourceState("a", "fake.thing", {"value": "1"}, {"out": "a:1"}),
        "b": ResourceState("b", "fake.thing", {"value": "a:1"}, {"out": "b:a:1"}, ("a",)),
    }
    deployment = FakeDeployment({"a": (lambda known: {"value": "1", "extra": 1}, set()), "b": reads("a")})
    providers = FakeProviders()
    executor, _ = run(deployment, providers, state)
    assert providers.calls == [("updateResourceRequest", "a")]
    assert executor.outcomes["b"].action is Action.NOOP


def test_deletes_run_in_reverse_dependency_order() -> None:
    state = {
        "a": ResourceState("a", "fake.thing", {}, {}),
        "b": ResourceState("b", "fake.thing", {}, {}, ("a",)),
        "c": ResourceState("c", "fake.thing", {}, {}, ("b",)),
        "x": ResourceState("x", "fake.thing", {}, {}),
    }
    providers = FakeProviders()
    executor, _ = run(FakeDeployment({}), providers, state, destroy=True)
    order = [path for _, path in providers.calls]
    assert order.index("c") < order.index("b") < order.index("a")
    assert executor.state == {}


def test_a_failed_delete_keeps_what_it_reads() -> None:
    state = {
        "a": ResourceState("a", "fake.thing", {}, {}),
        "b": ResourceState("b", "fake.thing", {"value": "stuck"}, {}, ("a",)),
    }

    def fail_b(kind: str, body: dict[str, Any]) -> None:
        if body["resource"]["inputProperties"].get("value") == "stuck":
            raise ProviderError("cannot")

    executor, _ = run(FakeDeployment({}), FakeProviders(fail_b), state, destroy=True)
    assert executor.outcomes["b"].status == "failed"
    assert executor.outcomes["a"].status == "skipped"
    assert "still read by b" in executor.outcomes["a"].message
    assert set(executor.state) == {"a", "b"}


def test_half_replaced_resource_leaves_state() -> None:
    state = {"a": ResourceState("a", "old.thing", {"value": "1"}, {})}

    def fail_create(kind: str, body: dict[str, Any]) -> None:
        if kind == protocol.CREATE:
            raise ProviderError("no capacity")

    executor, _ = run(FakeDeployment({"a": const("1")}), FakeProviders(fail_create), state)
    assert executor.outcomes["a"].action is Action.REPLACE
    assert "already destroyed" in executor.outcomes["a"].message
    assert executor.state == {}


def test_a_cycle_found_while_applying_is_named() -> None:
    deployment = FakeDeployment({"a": reads("b"), "b": reads("a"), "c": reads("a"), "d": const("d")})
    executor, _ = run(deployment, FakeProviders())
    status = {p: o.status for p, o in executor.outcomes.items()}
    assert status == {"a": "failed", "b": "failed", "c": "skipped", "d": "ok"}
    assert "cycle: a -> b -> a" in executor.outcomes["a"].message


def test_events_report_start_and_end() -> None:
    _, events = run(FakeDeployment({"a": const("1")}), FakeProviders())
    assert [(e.kind, e.path, e.action) for e in events] == [("start", "a", Action.CREATE), ("ok", "a", Action.CREATE)]


def test_failed_reevaluation_fails_the_waiting_resources() -> None:
    deployment = FakeDeployment({"a": const("1"), "b": reads("a")})
    original = deployment.evaluate

    def evaluate(known: Mapping[str, Mapping[str, Any]], select: set[str] | None = None) -> Evaluation:
        if select is not None:
            raise ProviderError("evaluation broke")
        return original(known, select)

    deployment.evaluate = evaluate  # type: ignore[method-assign]
    executor, _ = run(deployment, FakeProviders())
    assert executor.outcomes["a"].status == "ok"
    assert executor.outcomes["b"].status == "failed"
    assert "evaluation broke" in executor.outcomes["b"].message


def test_an_interrupted_run_records_the_operations_in_flight() -> None:
    import pytest

    gate = threading.Event()
    providers = FakeProviders(lambda kind, body: gate.wait(30) and None)
    deployment = FakeDeployment({"a": const("1"), "b": const("2")})
    desired = deployment.evaluate({}).resources

    def report(event: Event) -> None:
        if event.kind == "start" and event.path == "b":
            gate.set()  # a is in flight and will now finish
            raise KeyboardInterrupt

    executor = Executor(providers=providers, evaluate=deployment.evaluate, report=report)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        executor.run(plan(desired, {}), desired, {}, {})
    assert set(executor.state) == {"a"}
    assert executor.outcomes["a"].status == "ok"


def test_one_resource_that_fails_to_evaluate_fails_alone() -> None:
    deployment = FakeDeployment({"a": const("1"), "b": reads("a"), "c": reads("a")})
    original = deployment.evaluate

    def evaluate(known: Mapping[str, Mapping[str, Any]], select: set[str] | None = None) -> Evaluation:
        if select is not None and "c" in select:
            raise ProviderError("c is broken")
        return original(known, select)

    deployment.evaluate = evaluate  # type: ignore[method-assign]
    executor, _ = run(deployment, FakeProviders())
    assert executor.outcomes["b"].status == "ok"
    assert executor.outcomes["c"].status == "failed" and "c is broken" in executor.outcomes["c"].message


def test_dependencies_seen_in_every_pass_are_recorded() -> None:
    both: tuple[Inputs, set[str]] = ((lambda known: {"value": known["a"]["out"] + known["b"]["out"]}), {"a", "b"})
    deployment = FakeDeployment({"a": const("1"), "b": reads("a"), "c": both})

    def desired(path: str, known: Mapping[str, Mapping[str, Any]]) -> DesiredResource:
        compute, wanted = deployment.resources[path]
        missing = sorted(wanted - known.keys())
        if not missing:
            return DesiredResource(path, "fake.thing", compute(known))
        # Like Nix: only the first unknown read of a value is seen.
        return DesiredResource(path, "fake.thing", {"value": UNKNOWN}, blocked_by=frozenset(missing[:1]))

    deployment.desired = desired  # type: ignore[method-assign]
    executor, _ = run(deployment, FakeProviders())
    assert executor.state["c"].dependencies == ("a", "b")


def record(path: str, rank: int, *reads: str, value: str = "") -> ResourceState:
    return ResourceState(path, "fake.thing", {"value": value}, {}, tuple(reads), rank=rank)


def test_ranks_follow_the_order_of_operations() -> None:
    state = {"old": record("old", 4)}
    deployment = FakeDeployment({"old": const(""), "a": const("1"), "b": reads("a"), "c": reads("b")})
    executor, _ = run(deployment, FakeProviders(), state)
    ranks = {p: executor.state[p].rank for p in "abc"}
    assert 4 < ranks["a"] < ranks["b"] < ranks["c"], ranks
    assert executor.state["old"].rank == 4  # unchanged: not touched


def test_a_read_that_left_no_edge_is_still_deleted_before_what_it_reads() -> None:
    """zz read x's output without a trace (the first reader, w1, forced it); ranks order the deletes. zz's
    delete holds on until x's starts (or a second passes): x must not start while zz is still there."""
    state = {"x": record("x", 1), "w1": record("w1", 2, "x"), "zz": record("zz", 3, value="slow"), "y": record("y", 1)}
    x_started = threading.Event()
    log: list[str] = []

    def behaviour(kind: str, body: dict[str, Any]) -> None:
        value = body["resource"]["inputProperties"].get("value")
        if body["resource"]["outputProperties"] == {} and value == "slow":
            x_started.wait(timeout=1)
            log.append("zz done")

    providers = FakeProviders(behaviour)
    original = providers.call

    def call(
        provider: str, message: dict[str, Any], *, what: str, before_send: Any = None, hide: Any = ()
    ) -> dict[str, Any]:
        if "'x'" in what:
            log.append("x start")
            x_started.set()
        return original(provider, message, what=what, before_send=before_send)

    providers.call = call  # type: ignore[method-assign]
    executor, _ = run(FakeDeployment({}), providers, state, destroy=True)
    assert log == ["zz done", "x start"]
    assert executor.state == {}


def test_a_failed_delete_holds_back_only_what_it_may_read() -> None:
    state = {
        "x": record("x", 1),
        "w1": record("w1", 2, "x"),
        "w2": record("w2", 3, value="stuck"),
        "y": record("y", 1),  # read by nobody: nothing can read it without a trace
    }

    def fail_w2(kind: str, body: dict[str, Any]) -> None:
        if body["resource"]["inputProperties"].get("value") == "stuck":
            raise ProviderError("cannot")

    executor, _ = run(FakeDeployment({}), FakeProviders(fail_w2), state, destroy=True)
    status = {p: o.status for p, o in executor.outcomes.items()}
    assert status == {"w2": "failed", "w1": "ok", "y": "ok", "x": "skipped"}
    assert "w2 could not be deleted" in executor.outcomes["x"].message
    assert set(executor.state) == {"x", "w2"}


def test_ranks_of_older_records_never_contradict_an_edge() -> None:
    """A record written before ranks (0) that reads a newer one: the edge wins, nothing waits forever."""
    state = {"s": record("s", 5), "r": record("r", 0, "s"), "t": record("t", 6, "r")}
    providers = FakeProviders()
    executor, _ = run(FakeDeployment({}), providers, state, destroy=True)
    order = [path for _, path in providers.calls]
    assert order == ["t", "r", "s"]
    assert executor.state == {}


def test_unchanged_resources_get_the_edges_of_this_evaluation() -> None:
    state = {
        "a": ResourceState("a", "fake.thing", {"value": "1"}, {"out": "a:1"}, rank=1),
        "b": ResourceState("b", "fake.thing", {"value": "a:1"}, {"out": "b:a:1"}, (), rank=3),
    }
    deployment = FakeDeployment({"a": const("1"), "b": reads("a")})
    providers = FakeProviders()
    executor, _ = run(deployment, providers, state)
    assert providers.calls == []
    assert executor.state["b"].dependencies == ("a",) and executor.state["b"].rank == 3
    assert executor.state["a"].read


def test_a_new_read_of_a_resource_applied_later_records_the_reader_again() -> None:
    """b's inputs are the same, but it now reads a, applied after it: b is recorded again (no provider call)
    above a, so that ranks keep ordering whatever reads b without a trace."""
    state = {
        "a": ResourceState("a", "fake.thing", {"value": "1"}, {"out": "a:1"}, rank=3),
        "b": ResourceState("b", "fake.thing", {"value": "a:1"}, {"out": "b:a:1"}, (), rank=1),
    }
    deployment = FakeDeployment({"a": const("1"), "b": reads("a")})
    providers = FakeProviders()
    executor, _ = run(deployment, providers, state)
    assert providers.calls == []
    assert executor.state["b"].dependencies == ("a",) and executor.state["b"].rank > 3
