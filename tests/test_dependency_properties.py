"""The dependency order of any graph, through the real command line (issue 12): random DAGs with random names,
real Git, real nix-instantiate and a real provider process that logs when each request starts and ends.

Every resource has the type ``recorder.memo`` (tests/providers/recorder.py): its output ``value`` is a hash of its
inputs, so the expected value of every resource follows from the graph, and its ``id`` input names it in the
provider's log. The properties, each checked on the same kind of generated graph:

(a) ``plan`` and ``apply`` succeed: no false cycle;
(b) a resource's create starts only after the creates of everything it reads have ended;
(c) the inputs and outputs in state are the ones computed from the graph;
(d) the dependencies recorded in state are exactly what each resource reads;
(e) editing one resource plans it and its readers' transitive closure as updates, everything else as no-ops,
    and applies them in order;
(f) removing resources (with every resource that reads them) deletes each reader before what it reads;
(g) ``destroy`` deletes each reader before what it reads.

Some graphs are applied in two commits (a prefix of the graph first), so that resources also read outputs already
known when they are evaluated. ``NIXGITOPS_PROPERTY_EXAMPLES`` sets the number of graphs per property (default 8;
``make soak`` raises it). A failure prints the deployment text, the command's output and the provider's log.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Checkout, git
from hypothesis import HealthCheck, currently_in_test_context, given, note, settings
from hypothesis import strategies as st

from controller import paths as member_paths

RECORDER = ROOT / "tests" / "providers" / "recorder.py"
EXAMPLES = int(os.environ.get("NIXGITOPS_PROPERTY_EXAMPLES", "8"))
SHRINK_SECONDS = 60
"""Hypothesis shrinks a failure for at most this long, so that it reports before the per-test timeout."""
TIMEOUT = 60 + SHRINK_SECONDS + 20 * EXAMPLES
"""Seconds per property test: a graph takes about 1.5 s when it passes, several times that on a loaded machine."""
CLI_TIMEOUT = 120
DESTROY_SECONDS = 0.1
"""How long the recorder takes per destroy: deletes sent together overlap in its log, whatever the start-up times."""

PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the checkout; a failure prints its reproduction blob instead
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NIX_KEYWORDS = frozenset({"if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or"})
ODD = ("file.txt", "web-1.example.com", "a b", "x/y", "100%")
FAMILIAR = ("root", "mid", "leaf", "a", "b", "c", "x", "y", "z", "base", "top", "app", "db", "web")

# How one input field reads other resources' outputs: each form and how many resources it reads at most.
ONE_READ = {
    "plain": 1,  # members.a.outputs.value
    "secret": 1,  # sensitive "!${members.a.outputs.value}" (the taint and the sensitive mark on one string)
    "interp": 1,  # "<${members.a.outputs.value}>"
    "json": 1,  # builtins.toJSON members.a.outputs
}
TWO_READS = {
    "concat": 2,  # "${members.a.outputs.value}+${members.b.outputs.value}"
    "list": 2,  # [ members.a.outputs.value members.b.outputs.value ]
    "nested": 2,  # { x.y = members.a.outputs.value; x.z = members.b.outputs.value; }
}
FORMS = ONE_READ | TWO_READS


@pytest.fixture(scope="module", autouse=True)
def bounded_shrinking() -> Iterator[None]:
    """Each example runs the real CLI (seconds, not microseconds): cap Hypothesis's shrinking (5 minutes by
    default, an internal constant) so a failure is reported, shrunk as far as time allows, within the timeout."""
    from hypothesis.internal.conjecture import engine

    before = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if before is not None:
        engine.MAX_SHRINKING_SECONDS = min(before, SHRINK_SECONDS)
    yield
    if before is not None:
        engine.MAX_SHRINKING_SECONDS = before


# -- the graph model -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """One input field of a resource, reading the outputs of one or two others."""

    form: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Node:
    path: str  # dotted: "x" or "grp.x"
    seed: str  # a literal input, edited by property (e)
    reads: tuple[Read, ...]
    secret: bool = False  # the seed is marked sensitive (compared by its keyed digest, shown as "(sensitive)")

    @property
    def sources(self) -> frozenset[str]:
        return frozenset(s for r in self.reads for s in r.sources)


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    """In a topological order: a node reads only nodes before it. Names are drawn apart from this order."""
    staged: int = 0
    """When non-zero, the first ``staged`` nodes are applied in a commit of their own before the whole graph."""

    @property
    def paths(self) -> list[str]:
        return [n.path for n in self.nodes]

    def node(self, path: str) -> Node:
        return next(n for n in self.nodes if n.path == path)

    def edges(self) -> dict[str, frozenset[str]]:
        """reader -> the resources it reads."""
        return {n.path: n.sources for n in self.nodes}

    def readers_closure(self, start: set[str]) -> set[str]:
        """``start`` and every resource that reads one of them, directly or not."""
        found = set(start)
        for n in self.nodes:  # topological order: sources are settled before their readers
            if n.sources & found:
                found.add(n.path)
        return found

    def without(self, removed: set[str]) -> Graph:
        return Graph(tuple(n for n in self.nodes if n.path not in removed))

    def prefix(self, count: int) -> Graph:
        return Graph(self.nodes[:count])

    def edited(self, path: str) -> Graph:
        return Graph(
            tuple(Node(n.path, n.seed + "-edited", n.reads, n.secret) if n.path == path else n for n in self.nodes)
        )


names = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(lambda s: s not in NIX_KEYWORDS),
    st.sampled_from(FAMILIAR),
    st.sampled_from(ODD),  # quoted in paths, hashed in taint tags, escaped in state file names
)


@st.composite
def graphs(draw: st.DrawFn, min_size: int = 2, max_size: int = 12) -> Graph:
    size = draw(st.integers(min_size, max_size))
    groups = draw(st.lists(names, max_size=2, unique=True))
    taken: set[tuple[str | None, str]] = set()
    paths: list[str] = []
    for _ in range(size):
        group = draw(st.sampled_from([None, *groups])) if groups else None
        name = draw(names.filter(lambda s, g=group: (g, s) not in taken and (g is not None or s not in groups)))
        taken.add((group, name))
        paths.append(member_paths.render([name] if group is None else [group, name]))
    # Names sort against the dependency order as often as with it: a third of the graphs each way, a third as drawn.
    orientation = draw(st.sampled_from(["against", "with", "as drawn"]))
    if orientation != "as drawn":
        paths.sort(reverse=orientation == "against")
    nodes: list[Node] = []
    for i, path in enumerate(paths):
        count = draw(st.integers(0, min(4, i)))
        sources = draw(st.lists(st.sampled_from(paths[:i]), min_size=count, max_size=count, unique=True)) if i else []
        if sources and paths[i - 1] not in sources and draw(st.booleans()):
            sources[0] = paths[i - 1]  # half the time, read the node just before: deep graphs
        reads: list[Read] = []
        while sources:
            # With two sources left, a form reading both (one string, list or attribute set) half the time.
            form = draw(st.sampled_from([*ONE_READ, *TWO_READS] if len(sources) == 1 else [*TWO_READS, *ONE_READ]))
            take = min(FORMS[form], len(sources))
            reads.append(Read(form, tuple(sources[:take])))
            sources = sources[take:]
        nodes.append(Node(path, f"s{i}", tuple(reads), draw(st.integers(0, 3)) == 0))
    staged = draw(st.one_of(st.just(0), st.integers(1, size - 1)))
    return Graph(tuple(nodes), staged)


# -- the deployment text and the values it must produce -------------------------------------------------------


def attr(name: str) -> str:
    """A member name as a Nix attribute name."""
    return name if member_paths.BARE.fullmatch(name) else nix_string(name)


def ref(path: str) -> str:
    return "members." + ".members.".join(attr(n) for n in member_paths.parse(path)) + ".outputs"


def nix_string(text: str) -> str:
    return json.dumps(text).replace("${", "\\${")


def read_expression(read: Read) -> str:
    a = read.sources[0]
    if read.form == "plain":
        return f"{ref(a)}.value"
    if read.form == "interp":
        return f'"<${{{ref(a)}.value}}>"'
    if read.form == "secret":
        return f'sensitive "!${{{ref(a)}.value}}"'
    if read.form == "concat":
        return '"' + "+".join(f"${{{ref(s)}.value}}" for s in read.sources) + '"'
    if read.form == "list":
        return "[ " + " ".join(f"{ref(s)}.value" for s in read.sources) + " ]"
    if read.form == "nested":
        return "{ " + " ".join(f"x.{k} = {ref(s)}.value;" for k, s in zip("yz", read.sources, strict=False)) + " }"
    assert read.form == "json"
    return f"builtins.toJSON {ref(a)}"


def read_value(read: Read, values: dict[str, str]) -> Any:
    got = [values[s] for s in read.sources]
    return {
        "plain": lambda: got[0],
        "interp": lambda: f"<{got[0]}>",
        "secret": lambda: f"!{got[0]}",
        "concat": lambda: "+".join(got),
        "list": lambda: got,
        "nested": lambda: {"x": dict(zip("yz", got, strict=False))},
        "json": lambda: json.dumps({"value": got[0]}, separators=(",", ":")),
    }[read.form]()


def resource_text(node: Node, indent: str) -> str:
    seed = f"sensitive {nix_string(node.seed)}" if node.secret else nix_string(node.seed)
    fields = [f"id = {nix_string(node.path)};", f"seed = {seed};"]
    fields += [f"r{i} = {read_expression(r)};" for i, r in enumerate(node.reads)]
    name = attr(member_paths.parse(node.path)[-1])
    return f"{indent}members.{name} = {{ type = providers.recorder.memo; inputs = {{ {' '.join(fields)} }}; }};"


def deployment_text(graph: Graph, log: Path, *, keep: bool = False) -> str:
    """The deployment.nix of ``graph``; ``keep`` adds an unrelated resource, so removing all of the graph is
    not a plan that deletes everything (which nixgitops refuses outside ``destroy``)."""
    lines = [
        "{ members, providers, sensitive, ... }:",
        "{",
        f"  providers.recorder = {{ executable = {nix_string(sys.executable)};"
        f' args = [ {nix_string(str(RECORDER))} {nix_string(str(log))} "{DESTROY_SECONDS}" ];'
        ' resourceTypes = [ "memo" ]; };',
    ]
    groups: dict[str, list[Node]] = {}
    for node in graph.nodes:
        names = member_paths.parse(node.path)
        if len(names) > 1:
            groups.setdefault(names[0], []).append(node)
        else:
            lines.append(resource_text(node, "  "))
    for group, members in groups.items():
        lines.append(f"  members.{attr(group)} = {{")
        lines += [resource_text(n, "    ") for n in members]
        lines.append("  };")
    if keep:
        lines.append('  members.Keep = { type = providers.recorder.memo; inputs = { id = "Keep"; seed = "k"; }; };')
    lines.append("}")
    return "\n".join(lines) + "\n"


def shown(graph: Graph) -> dict[str, dict[str, Any]]:
    """The inputs of ``expected_inputs`` as state shows them: sensitive ones as "(sensitive)"."""
    inputs = expected_inputs(graph)
    for node in graph.nodes:
        if node.secret:
            inputs[node.path]["seed"] = "(sensitive)"
        for i, read in enumerate(node.reads):
            if read.form == "secret":
                inputs[node.path][f"r{i}"] = "(sensitive)"
    return inputs


def value_of(inputs: dict[str, Any]) -> str:
    """What tests/providers/recorder.py answers for these inputs."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "v" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def expected_inputs(graph: Graph) -> dict[str, dict[str, Any]]:
    values: dict[str, str] = {}
    inputs: dict[str, dict[str, Any]] = {}
    for node in graph.nodes:
        mine: dict[str, Any] = {"id": node.path, "seed": node.seed}
        mine |= {f"r{i}": read_value(r, values) for i, r in enumerate(node.reads)}
        inputs[node.path] = mine
        values[node.path] = value_of(mine)
    return inputs


# -- the provider's log ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    line: int
    clock: int
    event: str  # START or END
    kind: str  # create, update, destroy, read
    ident: str


def read_log(path: Path) -> list[Event]:
    if not path.exists():
        return []
    events = []
    for number, line in enumerate(path.read_text().splitlines()):
        clock, _pid, event, kind, ident = line.split(" ", 4)
        events.append(Event(number, int(clock), event, kind, ident))
    clocks = [e.clock for e in events]
    assert clocks == sorted(clocks), "the recorder's log is not in the order of its monotonic clock"
    return events


def spans(events: list[Event], kind: str) -> dict[str, tuple[int, int]]:
    """For each resource, the log lines where its ``kind`` request started and ended."""
    found: dict[str, dict[str, list[int]]] = {}
    for e in events:
        if e.kind == kind:
            found.setdefault(e.ident, {"START": [], "END": []})[e.event].append(e.line)
    return {ident: (min(marks["START"]), max(marks["END"], default=-1)) for ident, marks in found.items()}


def repeated(events: list[Event], kind: str) -> dict[str, str]:
    """The resources whose ``kind`` request did not start and end exactly once."""
    starts = Counter(e.ident for e in events if e.kind == kind and e.event == "START")
    ends = Counter(e.ident for e in events if e.kind == kind and e.event == "END")
    return {i: f"{starts[i]} started, {ends[i]} ended" for i in starts | ends if (starts[i], ends[i]) != (1, 1)}


# -- one world: a checkout, the recorder's log, the CLI -------------------------------------------------------


@dataclass
class World:
    checkout: Checkout
    log: Path
    text: str = ""

    @classmethod
    @contextmanager
    def create(cls) -> Iterator[World]:
        with tempfile.TemporaryDirectory(prefix="nixgitops-props-") as tmp:
            path = Path(tmp) / "repo"
            path.mkdir()
            git(path, "init", "-q", "-b", "main")
            (path / ".gitignore").write_text("/*\n!/.gitignore\n!/deployment.nix\n")
            yield cls(Checkout(path), Path(tmp) / "requests.log")

    def deploy(self, graph: Graph, *, keep: bool = False) -> None:
        self.text = deployment_text(graph, self.log, keep=keep)
        if currently_in_test_context():
            note(f"deployment.nix:\n{self.text}")
        self.checkout.write(self.text)
        self.checkout.commit()

    def context(self, *more: str) -> str:
        log = self.log.read_text() if self.log.exists() else ""
        return "\n".join([*more, f"deployment.nix:\n{self.text}", f"provider log:\n{log}"])

    def ok(self, *args: str) -> str:
        done = self.checkout.run(*args, timeout=CLI_TIMEOUT)
        assert done.returncode == 0, self.context(
            f"nixgitops {' '.join(args)}: exit {done.returncode}", f"stdout:\n{done.stdout}", f"stderr:\n{done.stderr}"
        )
        return done.stdout

    def state(self) -> dict[str, dict[str, Any]]:
        return {r["path"]: r for r in json.loads(self.ok("state", "list", "--json"))}

    def plan(self) -> dict[str, str]:
        return {c["path"]: c["action"] for c in json.loads(self.ok("plan", "--json"))["changes"]}

    def apply_all(self, graph: Graph, *, keep: bool = False) -> None:
        """Apply the graph: its staged prefix in a commit of its own first, when it has one."""
        if graph.staged:
            self.deploy(graph.prefix(graph.staged), keep=keep)
            self.ok("apply", "--yes")
        self.deploy(graph, keep=keep)
        self.ok("apply", "--yes")

    def operations(self, events: list[Event], kind: str) -> dict[str, tuple[int, int]]:
        """``spans(events, kind)``, after checking that no request of that kind was sent twice for a resource."""
        twice = repeated(events, kind)
        assert not twice, self.context(f"{kind} requests not sent exactly once: {twice}")
        return spans(events, kind)

    def assert_readers_deleted_first(self, graph: Graph, events: list[Event]) -> None:
        deleted = self.operations(events, "destroy")
        for reader, sources in graph.edges().items():
            for source in sources & deleted.keys():
                assert reader in deleted, self.context(f"{source} was deleted while its reader {reader} was not")
                assert deleted[reader][1] < deleted[source][0], self.context(
                    f"{source} was deleted (log line {deleted[source][0]}) before its reader {reader}"
                    f" finished deleting (log line {deleted[reader][1]})"
                )


# -- the properties -------------------------------------------------------------------------------------------


@pytest.mark.timeout(TIMEOUT)
@PROPERTY
@given(graph=graphs())
def test_a_plan_and_apply_succeed(graph: Graph) -> None:
    with World.create() as world:
        if graph.staged:
            world.deploy(graph.prefix(graph.staged))
            planned = world.plan()
            assert planned == dict.fromkeys(graph.paths[: graph.staged], "create"), world.context(f"plan {planned}")
            world.ok("apply", "--yes")
        world.deploy(graph)
        planned = world.plan()
        want = {p: "create" for p in graph.paths if p not in graph.paths[: graph.staged]}
        want |= {p: "noop" for p in graph.paths[: graph.staged]}
        assert planned == want, world.context(f"plan {planned}, expected {want}")
        world.ok("apply", "--yes")
        assert world.plan() == dict.fromkeys(graph.paths, "noop"), world.context("a second plan is not all no-ops")


@pytest.mark.timeout(TIMEOUT)
@PROPERTY
@given(graph=graphs())
def test_b_creates_start_after_what_they_read(graph: Graph) -> None:
    with World.create() as world:
        world.apply_all(graph)
        created = world.operations(read_log(world.log), "create")
        assert set(created) == set(graph.paths), world.context(f"created {sorted(created)}")
        for reader, sources in graph.edges().items():
            for source in sources:
                assert created[source][1] < created[reader][0], world.context(
                    f"{reader} was created (log line {created[reader][0]}) before {source}, which it reads,"
                    f" was (log line {created[source][1]})"
                )


@pytest.mark.timeout(TIMEOUT)
@PROPERTY
@given(graph=graphs())
def test_c_values_in_state_follow_the_graph(graph: Graph) -> None:
    with World.create() as world:
        world.apply_all(graph)
        state = world.state()
        want, masked = expected_inputs(graph), shown(graph)
        assert set(state) == set(want), world.context(f"state holds {sorted(state)}")
        for path, inputs in want.items():
            record = state[path]
            assert (record["type"], record["inputs"], record["outputs"]) == (
                "recorder.memo",
                masked[path],
                {"value": value_of(inputs)},  # (the provider was given the real values)
            ), world.context(f"state record of {path}: {json.dumps(record, indent=1)}")


@pytest.mark.timeout(TIMEOUT)
@PROPERTY
@given(graph=graphs())
def test_d_recorded_dependencies_are_exact(graph: Graph) -> None:
    with World.create() as world:
        world.apply_all(graph)
        state = world.state()
        recorded = {p: sorted(r["dependencies"]) for p, r in state.items()}
        want = {p: sorted(s) for p, s in graph.edges().items()}
        wrong = {p: f"recorded {recorded.get(p)}, reads {want[p]}" for p in want if recorded.get(p) != want[p]}
        assert not wrong, world.context(f"recorded dependencies differ from the reads: {wrong}")
        shown = json.loads(world.ok("state", "show", graph.paths[-1]))
        assert sorted(shown["dependencies"]) == want[graph.paths[-1]], world.context(f"state show: {shown}")


@pytest.mark.timeout(TIMEOUT)
@PROPERTY
@given(graph=graphs(), data=st.data())
def test_e_an_edit_changes_exactly_its_readers_closure(graph: Graph, data: st.DataObject) -> None:
    edited = data.draw(st.sampled_from(graph.paths), label="edited")
    changed = graph.readers_closure({edited})
    with World.create() as world:
        world.apply_all(graph)
        after = graph.edited(edited)
        world.deploy(after)
        planned = world.plan()
        want = {p: "update" if p in changed else "noop" for p in graph.paths}
        assert planned == want, world.context(f"edited {edited}: plan {planned}, expected {want}")
        before = len(read_log(world.log))
        world.ok("apply", "--yes")
        events = read_log(world.log)[before:]
        updated = world.operations(events, "update")
        assert set(updated) == changed, world.context(f"edited {edited}: updated {sorted(updated)}")
        for reader in changed:
            for source in after.node(reader).sources & changed:
                assert updated[source][1] < updated[reader][0], world.context(
                    f"{reader} was updated before {source}, which it reads"
                )
        outputs = {p: r["outputs"]["value"] for p, r in world.state().items()}
        want_values = {p: value_of(i) for p, i in expected_inputs(after).items()}
        assert outputs == want_values, world.context(f"edited {edited}: values in state after the update")


@pytest.mark.timeout(TIMEOUT)
@PROPERTY
@given(graph=graphs(), data=st.data())
def test_f_removed_readers_are_deleted_before_what_they_read(graph: Graph, data: st.DataObject) -> None:
    # Drawn from the first half of the order (sources more often than leaves), each with all its readers.
    firsts = graph.paths[: max(1, len(graph.paths) // 2)]
    roots = data.draw(st.sets(st.sampled_from(firsts), min_size=1, max_size=3), label="removed with their readers")
    removed = graph.readers_closure(roots)
    with World.create() as world:
        world.apply_all(graph, keep=True)
        before = len(read_log(world.log))
        world.deploy(graph.without(removed), keep=True)
        world.ok("apply", "--yes")
        events = read_log(world.log)[before:]
        touched = {e.ident for e in events if e.kind != "destroy"}
        assert not touched, world.context(f"removing {sorted(removed)} also touched {sorted(touched)}")
        assert set(world.operations(events, "destroy")) == removed, world.context(f"removing {sorted(removed)}")
        world.assert_readers_deleted_first(graph, events)
        assert set(world.state()) == (set(graph.paths) - removed) | {"Keep"}, world.context("state after removal")


@pytest.mark.timeout(TIMEOUT)
@PROPERTY
@given(graph=graphs())
def test_g_destroy_deletes_readers_first(graph: Graph) -> None:
    with World.create() as world:
        world.apply_all(graph)
        before = len(read_log(world.log))
        world.ok("destroy", "--yes")
        events = read_log(world.log)[before:]
        assert set(world.operations(events, "destroy")) == set(graph.paths), world.context("destroy")
        world.assert_readers_deleted_first(graph, events)
        assert world.state() == {}, world.context("state after destroy")


# -- fixed regressions ----------------------------------------------------------------------------------------

CHAIN = """\
{ members, providers, ... }: {
  members.root = { type = providers.local.memo; inputs.initialize_with = "r"; };
  members.mid  = { type = providers.local.memo; inputs.initialize_with = "m-${members.root.outputs.value}"; };
  members.leaf = { type = providers.local.memo; inputs.initialize_with = "l-${members.mid.outputs.value}"; };
}
"""


def test_chain_named_against_its_order_is_no_cycle(checkout: Checkout) -> None:
    """Found by review: this chain was refused at plan as `a cycle: mid -> root -> mid`; named a/b/c it applied."""
    checkout.deploy(CHAIN)
    assert {p: c["action"] for p, c in checkout.plan().items()} == dict.fromkeys(["leaf", "mid", "root"], "create")
    checkout.ok("apply", "--yes")
    state = checkout.state()
    assert {p: r["outputs"] for p, r in state.items()} == {
        "root": {"value": "r"},
        "mid": {"value": "m-r"},
        "leaf": {"value": "l-m-r"},
    }


@pytest.mark.parametrize("names", [("root", "mid", "leaf"), ("a", "b", "c")])
def test_chain_records_exactly_its_reads(checkout: Checkout, names: tuple[str, str, str]) -> None:
    """leaf reads mid only, not mid's own source (a/b/c recorded c: [a, b])."""
    first, second, third = names
    checkout.deploy(CHAIN.replace("root", first).replace("mid", second).replace("leaf", third))
    checkout.ok("apply", "--yes")
    recorded = {p: r["dependencies"] for p, r in checkout.state().items()}
    assert recorded == {first: [], second: [first], third: [second]}


def test_reader_of_two_added_later_records_both() -> None:
    """Found by review: `c`, reading `b` and `a` in one string and added after `a` was applied, recorded only `b`
    (the probe saw the first unknown; `a` was known when `c` was evaluated)."""
    with World.create() as world:
        a = Node("a", "s0", ())
        b = Node("b", "s1", (Read("interp", ("a",)),))
        c = Node("c", "s2", (Read("concat", ("b", "a")),))
        world.deploy(Graph((a,)))
        world.ok("apply", "--yes")
        graph = Graph((a, b, c))
        world.deploy(graph)
        assert 'r0 = "${members.b.outputs.value}+${members.a.outputs.value}";' in world.text
        world.ok("apply", "--yes")
        state = world.state()
        recorded = {p: sorted(r["dependencies"]) for p, r in state.items()}
        assert recorded == {"a": [], "b": ["a"], "c": ["a", "b"]}, world.context(f"recorded {recorded}")
        assert state["c"]["outputs"] == {"value": value_of(expected_inputs(graph)["c"])}
        before = len(read_log(world.log))
        world.ok("destroy", "--yes")
        events = read_log(world.log)[before:]
        deleted = world.operations(events, "destroy")
        assert sorted(deleted, key=lambda p: deleted[p][0]) == ["c", "b", "a"], world.context()
        world.assert_readers_deleted_first(graph, events)


def test_reader_of_two_known_outputs_is_deleted_first() -> None:
    """Found by review: `c`, reading `a` and `b` (both already applied) in one string, recorded only `a`, and
    destroy deleted `b` at the same time as `c`."""
    with World.create() as world:
        a, b = Node("a", "s0", ()), Node("b", "s1", ())
        world.deploy(Graph((a, b)))
        world.ok("apply", "--yes")
        graph = Graph((a, b, Node("c", "s2", (Read("concat", ("a", "b")),))))
        world.deploy(graph)
        world.ok("apply", "--yes")
        recorded = {p: sorted(r["dependencies"]) for p, r in world.state().items()}
        before = len(read_log(world.log))
        world.ok("destroy", "--yes")
        events = read_log(world.log)[before:]
        world.assert_readers_deleted_first(graph, events)
        assert recorded == {"a": [], "b": [], "c": ["a", "b"]}, world.context(f"recorded {recorded}")
