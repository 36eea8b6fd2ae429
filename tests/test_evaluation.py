"""Evaluation with the real nix-instantiate and the shipped harness."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from controller.errors import DeploymentError, EvaluationError
from controller.evaluation import NixEvaluator, parse_traces
from controller.model import UNKNOWN


def evaluator(tmp_path: Path, text: str, name: str = "deployment.nix") -> NixEvaluator:
    entry = tmp_path / name
    entry.write_text(textwrap.dedent(text))
    return NixEvaluator(entry)


LAYERED = """
{ members, providers, ... }:
{
  providers.dns = { executable = ./dns-provider; args = [ "--zone" ./zone ]; resourceTypes = [ "record" ]; };
  members.base = { type = providers.local.exec; inputs = { executable = "echo"; args = [ "x" ]; }; };
  members.mid = {
    type = providers.local.file;
    inputs = { name = "m"; contents = members.base.outputs.stdout; mode = "0644"; };
  };
  members.top = {
    members.leaf = {
      type = providers.dns.record;
      inputs = { target = members.mid.outputs; two = "${members.base.outputs.stdout}${members.mid.inputs.name}"; };
      lifecycle.preventDestroy = true;
    };
  };
}
"""


def test_unknown_outputs_block_only_the_fields_that_read_them(tmp_path: Path) -> None:
    answer = evaluator(tmp_path, LAYERED).evaluate({})
    assert set(answer.resources) == {"base", "mid", "top.leaf"}
    base, mid, leaf = (answer.resources[p] for p in ("base", "mid", "top.leaf"))
    assert base.ready and base.inputs == {"executable": "echo", "args": ["x"]}
    assert not mid.ready
    assert mid.inputs == {"name": "m", "contents": UNKNOWN, "mode": "0644"}
    assert mid.blocked_by == {"base"}
    assert leaf.type == "dns.record" and leaf.prevent_destroy
    assert leaf.blocked_by == {"mid", "base"}


def test_known_outputs_make_readers_ready(tmp_path: Path) -> None:
    answer = evaluator(tmp_path, LAYERED).evaluate({"base": {"stdout": "B"}, "mid": {"id": 7}})
    leaf = answer.resources["top.leaf"]
    assert leaf.ready
    assert leaf.inputs == {"target": {"id": 7}, "two": "Bm"}


def test_declared_providers_paths_become_absolute_strings(tmp_path: Path) -> None:
    answer = evaluator(tmp_path, LAYERED).evaluate({})
    dns = answer.providers["dns"]
    assert dns.executable == str(tmp_path / "dns-provider")
    assert dns.args == ("--zone", str(tmp_path / "zone"))
    assert dns.resource_types == {"record"}
    assert answer.providers["local"].builtin


@pytest.mark.parametrize(
    "known",
    [{}, {"base": {"stdout": "B"}}, {"base": {"stdout": "B"}, "mid": {}}, {"mid": {"id": 7}}],
    ids=["none-known", "base-known", "all-known", "mid-known"],
)
def test_every_read_is_an_edge_whether_the_outputs_are_known_or_not(tmp_path: Path, known: dict[str, Any]) -> None:
    answer = evaluator(tmp_path, LAYERED).evaluate(known)
    # top.leaf reads base in a string that also reads mid's inputs (not an edge) and mid as a whole
    assert answer.dependencies == {"base": frozenset(), "mid": {"base"}, "top.leaf": {"mid", "base"}}


CHAIN = """
{ members, providers, ... }: {
  members.root = { type = providers.local.memo; inputs.initialize_with = "r"; };
  members.mid  = { type = providers.local.memo; inputs.initialize_with = "m-${members.root.outputs.value}"; };
  members.leaf = { type = providers.local.memo; inputs.initialize_with = "l-${members.mid.outputs.value}"; };
  members.both = {
    type = providers.local.memo;
    inputs.initialize_with = "${members.mid.outputs.value}/${members.root.outputs.value}";
  };
  members.again = { type = providers.local.memo; inputs = { x = [ { y = members.root.outputs.value; } ]; }; };
}
"""


@pytest.mark.parametrize("known", [(), ("root",), ("root", "mid")])
def test_names_that_sort_against_the_order_get_exact_edges(tmp_path: Path, known: tuple[str, ...]) -> None:
    """root/mid/leaf sort against their order; `both` reads two resources in one string; three resources read
    root's output once it is known (only the first forces it: the others keep its taint)."""
    outputs = {p: {"value": p.upper()} for p in known}
    answer = evaluator(tmp_path, CHAIN).evaluate(outputs)
    expected = {"root": set(), "mid": {"root"}, "leaf": {"mid"}, "both": {"mid", "root"}, "again": {"root"}}
    if "mid" not in known:  # an unknown output stops the string at it: `both` reads root once mid is known
        expected["both"] = {"mid"}
    assert answer.dependencies == expected


def test_a_deployment_that_refuses_string_context_is_evaluated_without_taint(tmp_path: Path) -> None:
    text = """
    { members, providers, ... }: {
      members.a = { type = providers.local.memo; inputs.initialize_with = "{}"; };
      members.b = { type = providers.local.memo; inputs.initialize_with = builtins.fromJSON members.a.outputs.value; };
    }
    """
    lines: list[str] = []
    ev = NixEvaluator(tmp_path / "deployment.nix", log=lines.append)
    (tmp_path / "deployment.nix").write_text(textwrap.dedent(text))
    answer = ev.evaluate({"a": {"value": '{"k": 1}'}})
    assert answer.resources["b"].inputs == {"initialize_with": {"k": 1}}
    assert answer.dependencies["b"] == {"a"}  # the first read is traced
    assert not ev.taint and any("string with context" in line for line in lines)


def test_select_evaluates_only_some_resources(tmp_path: Path) -> None:
    answer = evaluator(tmp_path, LAYERED).evaluate({}, select={"top.leaf"})
    assert set(answer.resources) == {"top.leaf"}


def test_one_process_per_pass(tmp_path: Path) -> None:
    ev = evaluator(tmp_path, LAYERED)
    ev.evaluate({})
    assert ev.passes == 1


def test_a_plain_attribute_set_is_accepted(tmp_path: Path) -> None:
    answer = evaluator(tmp_path, '{ members.a = { type = "local.memo"; inputs.initialize_with = 1; }; }').evaluate({})
    assert answer.resources["a"].inputs == {"initialize_with": 1}


def test_inputs_as_a_whole_unknown(tmp_path: Path) -> None:
    text = """
    { members, providers, ... }: {
      members.a = { type = providers.local.memo; inputs.initialize_with = 1; };
      members.b = { type = providers.local.memo; inputs = members.a.outputs; };
    }
    """
    b = evaluator(tmp_path, text).evaluate({}).resources["b"]
    assert not b.inputs_known and not b.ready and b.blocked_by == {"a"}


def test_user_traces_are_forwarded(tmp_path: Path) -> None:
    lines: list[str] = []
    entry = tmp_path / "deployment.nix"
    entry.write_text('{ ... }: builtins.trace "hello from the user" { }')
    NixEvaluator(entry, log=lines.append).evaluate({})
    assert lines == ["trace: hello from the user"]


@pytest.mark.parametrize(
    ("text", "error", "needle"),
    [
        ("{ members, ... }: { members.a = ; }", EvaluationError, "syntax error"),
        ("{ ... }: { members.a = 3; }", DeploymentError, "is a int"),
        ("{ ... }: { members.a.members = 3; }", DeploymentError, "`members` that is a int"),
        ('{ ... }: { members.a = { type = "local.memo"; inputs = [ ]; }; }', DeploymentError, "not a list"),
        (
            '{ ... }: { members.a = { type = "local.memo"; lifecycle.preventDestroy = "yes"; }; }',
            DeploymentError,
            "preventDestroy must be true or false",
        ),
        ("{ ... }: { providers.local = { }; }", DeploymentError, "'local' is built in"),
        (
            '{ ... }: { members.a = { type = "local.memo"; inputs.initialize_with = [ 123456789.0 ]; }; }',
            DeploymentError,
            "input 'initialize_with.0' is a floating-point number",
        ),
        ('{ ... }: { providers.x = { resourceTypes = [ "a" ]; }; }', DeploymentError, "`executable`"),
        (
            '{ ... }: { members.a = { type = "local.memo"; inpts.initialize_with = 1; }; }',
            DeploymentError,
            "member 'a' .* has `inpts`, which nixgitops does not know.* Did you mean `inputs`",
        ),
        ('{ ... }: { members.a = { type = "local.memo"; status = null; }; }', DeploymentError, "has `status`"),
        (
            '{ ... }: { members.a = { type = "local.memo"; lifecycle.preventDestory = true; }; }',
            DeploymentError,
            "`lifecycle.preventDestory`.* Did you mean `preventDestroy`",
        ),
        ("{ ... }: { members.g = { members = { }; type2 = 1; }; }", DeploymentError, "member 'g' .* has `type2`"),
        ("{ ... }: { member.a = 1; }", DeploymentError, "`member` at its top level.* Did you mean `members`"),
        ("{ outputs = { }; inputs = { }; }", DeploymentError, "This looks like a flake"),
    ],
)
def test_errors(tmp_path: Path, text: str, error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle):
        evaluator(tmp_path, text).evaluate({})


def test_missing_nix_is_explained(tmp_path: Path) -> None:
    entry = tmp_path / "deployment.nix"
    entry.write_text("{ ... }: { }")
    with pytest.raises(EvaluationError, match="apt-get install nix-bin"):
        NixEvaluator(entry, nix_instantiate="/nonexistent/nix-instantiate").evaluate({})


def test_parse_traces_attributes_reads_to_the_resource_whose_end_marker_comes_next() -> None:
    traces = parse_traces(
        "\n".join(
            [
                "trace: nixgitops:read z",  # before the resources: nobody's
                "trace: nixgitops:start",
                "trace: nixgitops:read k",
                "trace: nixgitops:unknown x",
                "trace: nixgitops:blocked f",
                "trace: nixgitops:blocked g",
                "trace: nixgitops:done a",
                "trace: nixgitops:unknown y",
                "trace: user says hi",
                "trace: nixgitops:done b",
            ]
        )
    )
    assert traces.reads == {"a": {"k", "x"}, "b": {"y"}}
    assert traces.unknown == {"a": {"x"}, "b": {"y"}}
    assert traces.user_errors == [("a", "g")]
    assert traces.other == ["trace: user says hi"]


def test_store_setting_is_passed_to_nix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ev = evaluator(tmp_path, LAYERED)
    monkeypatch.setenv("NIXGITOPS_NIX_STORE", "dummy://")
    assert set(ev.evaluate({}).resources) == {"base", "mid", "top.leaf"}
    monkeypatch.setenv("NIXGITOPS_NIX_STORE", "bogus://nowhere")
    with pytest.raises(EvaluationError, match="bogus"):
        ev.evaluate({})


def test_a_resource_whose_try_eval_catches_an_unknown_output_waits_for_it(tmp_path: Path) -> None:
    """A fallback for an output not known yet would be sent to the provider before the output exists."""
    text = """
    { members, providers, ... }: {
      members.a = { type = providers.local.memo; inputs.initialize_with = "x"; };
      members.b = {
        type = providers.local.memo;
        inputs.initialize_with = let r = builtins.tryEval members.a.outputs.value; in if r.success then r.value else "";
      };
    }
    """
    ev = evaluator(tmp_path, text)
    b = ev.evaluate({}).resources["b"]
    assert not b.ready and b.blocked_by == {"a"} and b.reads == {"a"}
    assert ev.evaluate({"a": {"value": "A"}}).resources["b"].inputs == {"initialize_with": "A"}


def test_an_output_appended_to_a_path_is_evaluated_without_taint(tmp_path: Path) -> None:
    """Nix refuses string context in more places than fromJSON: any refusal falls back to an untainted pass."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "E.conf").write_text("hi")
    text = """
    { members, providers, ... }: {
      members.env = { type = providers.local.memo; inputs.initialize_with = "E"; };
      members.r = {
        type = providers.local.memo;
        inputs.initialize_with = builtins.readFile (./conf + "/${members.env.outputs.value}.conf");
      };
    }
    """
    ev = evaluator(tmp_path, text)
    answer = ev.evaluate({"env": {"value": "E"}})
    assert answer.resources["r"].inputs == {"initialize_with": "hi"} and answer.dependencies["r"] == {"env"}
    assert not ev.taint
