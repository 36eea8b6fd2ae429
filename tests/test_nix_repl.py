"""The persistent evaluator: the real `nix repl` gives the same answers as `nix-instantiate`, sends only what
changed, survives errors, and hands over to `nix-instantiate` when it cannot go on."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import Checkout

from controller.errors import EvaluationError
from controller.evaluation import NixEvaluator
from controller.model import UNKNOWN, EvalLimits, KnownOutputs

CHAIN = """
{ members, providers, ... }:
{
  members.a = { type = providers.local.memo; inputs.initialize_with = "A"; };
  members.b = { type = providers.local.memo; inputs.initialize_with = "${members.a.outputs.value}-b"; };
  members.c = { type = providers.local.memo; inputs.initialize_with = members.b.outputs.value + "-c"; };
  members.d = {
    type = providers.local.memo;
    inputs.initialize_with = if members.c.outputs.value == "boom" then throw "c said boom" else "d";
  };
}
"""


def entry(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deployment.nix"
    path.write_text(textwrap.dedent(text))
    return path


def both(tmp_path: Path, text: str) -> tuple[NixEvaluator, NixEvaluator]:
    """An evaluator in a session (the repl) and one without (nix-instantiate), on the same file."""
    path = entry(tmp_path, text)
    return NixEvaluator(path), NixEvaluator(path)


def test_repl_answers_as_nix_instantiate_does_as_outputs_become_known(tmp_path: Path) -> None:
    in_repl, one_shot = both(tmp_path, CHAIN)
    known = KnownOutputs({"a": {"value": "A"}})
    with in_repl.session():
        for path, value in (("b", "A-b"), ("c", "A-b-c")):
            answer = in_repl.evaluate(known, select={path, "d"})
            expected = one_shot.evaluate(dict(known), select={path, "d"})
            assert answer == expected
            assert answer.resources[path].inputs == {"initialize_with": value}
            assert answer.resources["d"].inputs == {"initialize_with": UNKNOWN}
            known.set(path, {"value": value})
        assert in_repl._repl is not None
        first = in_repl._repl.proc.pid
        assert in_repl.evaluate(known, select={"d"}).resources["d"].inputs == {"initialize_with": "d"}
        # a resource dropped from the known outputs is unknown again, in the same process
        known.discard("c")
        answer = in_repl.evaluate(known, select={"d"})
        assert answer.resources["d"].blocked_by == {"c"}
        assert in_repl._repl.proc.pid == first
    assert in_repl._repl is None  # closed with the session


def test_a_user_error_is_reported_and_the_repl_goes_on(tmp_path: Path) -> None:
    in_repl, one_shot = both(tmp_path, CHAIN)
    known = KnownOutputs({"a": {"value": "A"}, "b": {"value": "B"}, "c": {"value": "boom"}})
    with in_repl.session():
        with pytest.raises(EvaluationError) as raised:
            in_repl.evaluate(known, select={"d"})
        with pytest.raises(EvaluationError) as expected:
            one_shot.evaluate(dict(known), select={"d"})
        assert "c said boom" in str(raised.value)
        assert str(raised.value) == str(expected.value)
        known.set("c", {"value": "fine"})
        assert in_repl.evaluate(known, select={"d"}).resources["d"].inputs == {"initialize_with": "d"}


def test_evaluation_that_needs_the_store_moves_to_a_repl_with_a_store_of_its_own(tmp_path: Path) -> None:
    """dummy:// cannot take a file (a source copied, `builtins.toFile`, nixgitops's `sensitive` mark): the repl starts
    again with a store in its scratch directory, and the session stays in a repl; nothing reaches the real store."""
    (tmp_path / "script.sh").write_text(f"echo {tmp_path.name}\n")  # (a file the real store cannot have)
    in_repl, one_shot = both(
        tmp_path,
        """
        { members, providers, ... }:
        {
          members.a = { type = providers.local.memo; inputs.initialize_with = "A"; };
          members.b.type = providers.local.memo;
          members.b.inputs.initialize_with = "${./script.sh} ${members.a.outputs.value}";
        }
        """,
    )
    logged: list[str] = []
    in_repl.log = logged.append
    known = KnownOutputs({"a": {"value": "A"}})
    with in_repl.session():
        answer = in_repl.evaluate(known, select={"b"})
        assert in_repl._repl is not None and in_repl._private_store
        again = in_repl.evaluate(known, select={"b"})
    value = answer.resources["b"].inputs["initialize_with"]
    assert value.startswith("/nix/store/") and value.endswith("-script.sh A")
    assert answer == one_shot.evaluate(dict(known), select={"b"})
    assert again.resources["b"].inputs == answer.resources["b"].inputs  # (the second pass: still in the repl)
    assert not any("nix-instantiate from now on" in line for line in logged)
    stored = value.split(" ")[0]
    valid = subprocess.run(["nix-store", "--check-validity", stored], capture_output=True, check=False)
    assert valid.returncode != 0, f"{stored} reached the real store"


def test_a_repl_that_dies_is_replaced_by_nix_instantiate(tmp_path: Path) -> None:
    in_repl, one_shot = both(tmp_path, CHAIN)
    known = KnownOutputs({"a": {"value": "A"}})
    with in_repl.session():
        in_repl.evaluate(known, select={"b"})
        assert in_repl._repl is not None
        os.killpg(in_repl._repl.proc.pid, signal.SIGKILL)
        known.set("b", {"value": "A-b"})
        answer = in_repl.evaluate(known, select={"c"})
        assert in_repl._repl is None
    assert answer == one_shot.evaluate(dict(known), select={"c"})


def test_known_outputs_log_every_change() -> None:
    known = KnownOutputs({"a": {"v": 1}})
    known.set("b", {"v": 2})
    known.discard("a")
    known.discard("missing")
    assert dict(known) == {"b": {"v": 2}} and len(known) == 1
    assert known.changes == ["a", "b", "a"]
    snapshot = known.snapshot()
    known.set("c", {})
    assert "c" not in snapshot


def test_a_chain_applied_through_the_repl_leaves_nothing_to_do(checkout: Checkout) -> None:
    """End to end: twelve levels, each reading the one before, created in one run."""
    lines = ["{ members, providers, ... }:", "{"]
    lines.append('  members.r0 = { type = providers.local.memo; inputs.initialize_with = "0"; };')
    for i in range(1, 12):
        reads = f'"${{members.r{i - 1}.outputs.value}}.{i}"'
        lines.append(f"  members.r{i} = {{ type = providers.local.memo; inputs.initialize_with = {reads}; }};")
    lines.append("}")
    checkout.deploy("\n".join(lines) + "\n")
    done = checkout.ok("apply", "--yes")
    assert "nix-instantiate from now on" not in done.stderr + done.stdout  # the repl served every pass
    state = checkout.state()
    assert state["r11"]["outputs"]["value"] == ".".join(str(i) for i in range(12))
    assert all(c["action"] == "noop" for c in checkout.plan().values())


def test_a_pass_that_runs_out_of_time_is_stopped_and_the_next_pass_works(tmp_path: Path) -> None:
    """The time limit holds for a whole request, even when the deployment traces without end; the session goes
    on with a new repl."""
    forever = 'let f = n: builtins.trace "tick" (if n == 0 then 1 else f (n - 1) + f (n - 1)); in f 60'
    path = entry(
        tmp_path,
        f"""
        {{ members, providers, ... }}:
        {{
          members.a = {{ type = providers.local.memo; inputs.initialize_with = "A"; }};
          members.b.type = providers.local.memo;
          members.b.inputs.initialize_with = if members.a.outputs.value == "loop" then {forever} else "ok";
        }}
        """,
    )
    evaluator = NixEvaluator(path, limits=EvalLimits(timeout=2))
    with evaluator.session():
        known = KnownOutputs({"a": {"value": "loop"}})
        with pytest.raises(EvaluationError, match="did not finish within 2 s"):
            evaluator.evaluate(known, select={"b"})
        known.set("a", {"value": "fine"})
        assert evaluator.evaluate(known, select={"b"}).resources["b"].inputs == {"initialize_with": "ok"}


def test_a_deployment_cannot_forge_the_repl_markers(tmp_path: Path) -> None:
    forged = 'builtins.trace "nixgitops:end 3" (builtins.trace "nixgitops:result {}" "real")'
    path = entry(
        tmp_path,
        f"""
        {{ members, providers, ... }}:
        {{
          members.a = {{ type = providers.local.memo; inputs.initialize_with = "A"; }};
          members.b.type = providers.local.memo;
          members.b.inputs.initialize_with = builtins.seq members.a.outputs.value ({forged});
        }}
        """,
    )
    evaluator = NixEvaluator(path)
    with evaluator.session():
        known = KnownOutputs({"a": {"value": "A"}})
        for _ in range(3):
            assert evaluator.evaluate(known, select={"b"}).resources["b"].inputs == {"initialize_with": "real"}
        assert evaluator._repl is not None


FLOOD = """
{ members, providers, ... }:
let
  # 50,000 lines of the deployment's own trace output (about 1 MB) before the value: more than is kept of them
  flood = value: builtins.seq
    (builtins.foldl' (n: i: builtins.trace "tick ${toString i}" n) 0 (builtins.genList (i: i) 50000)) value;
in
{
  members.a = { type = providers.local.memo; inputs.initialize_with = "A"; };
  members.b = { type = providers.local.memo; inputs.initialize_with = flood "${members.a.outputs.value}-b"; };
  members.c.type = providers.local.memo;
  members.c.inputs.initialize_with = flood (if members.a.outputs.value == "boom" then abort "a said boom" else "c");
}
"""


def test_what_a_deployment_prints_leaves_the_markers_and_the_error_whole(tmp_path: Path) -> None:
    """Of a deployment's own trace output only the end is kept; the harness's markers all are (who waits for
    whom), and so is Nix's error, which comes last."""
    in_repl, one_shot = both(tmp_path, FLOOD)
    known = KnownOutputs()
    with in_repl.session():
        answer = in_repl.evaluate(known, select={"b", "c"})
        assert answer == one_shot.evaluate(dict(known), select={"b", "c"})
        assert answer.resources["b"].blocked_by == answer.resources["c"].blocked_by == {"a"}
        known.set("a", {"value": "boom"})
        errors = []
        for evaluator in (in_repl, one_shot):
            with pytest.raises(EvaluationError) as raised:
                evaluator.evaluate(known, select={"c"})
            errors.append(str(raised.value))
        assert in_repl._repl is not None  # the repl answered, and goes on
    for text in errors:
        assert "a said boom" in text and "earlier lines of output were dropped" in text, text[-2000:]
        assert len(text) < 256 * 1024, f"an error of {len(text)} characters"
