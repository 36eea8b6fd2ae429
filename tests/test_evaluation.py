"""Evaluation with the real nix-instantiate and the shipped harness."""

from __future__ import annotations

import textwrap
from pathlib import Path

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


def test_probe_finds_dependencies_even_of_known_outputs(tmp_path: Path) -> None:
    answer = evaluator(tmp_path, LAYERED).evaluate(
        {"base": {"stdout": "B"}, "mid": {}}, probe={"mid", "top.leaf", "base"}
    )
    assert answer.dependencies == {"base": frozenset(), "mid": {"base"}, "top.leaf": {"mid", "base"}}


def test_select_evaluates_only_some_resources(tmp_path: Path) -> None:
    answer = evaluator(tmp_path, LAYERED).evaluate({}, select={"top.leaf"})
    assert set(answer.resources) == {"top.leaf"}


def test_one_process_per_pass(tmp_path: Path) -> None:
    ev = evaluator(tmp_path, LAYERED)
    ev.evaluate({}, probe={"mid"})
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
        ('{ ... }: { members."a b" = { type = "local.memo"; }; }', DeploymentError, "'a b' is not allowed"),
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
        ('{ ... }: { members."a.b" = { type = "local.memo"; }; }', DeploymentError, "'a.b' is not allowed"),
        ('{ ... }: { providers.x = { resourceTypes = [ "a" ]; }; }', DeploymentError, "`executable`"),
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


def test_parse_traces_attributes_unknowns_to_fields() -> None:
    traces = parse_traces(
        "\n".join(
            [
                "trace: nixgitops:eval a",
                "trace: nixgitops:unknown x",
                "trace: nixgitops:blocked f",
                "trace: nixgitops:blocked g",
                "trace: nixgitops:probe b",
                "trace: nixgitops:unknown y",
                "trace: user says hi",
            ]
        )
    )
    assert traces.blocked == {"a": {"f": {"x"}}}
    assert traces.user_errors == [("a", "g")]
    assert traces.reads == {"b": {"y"}}
    assert traces.other == ["trace: user says hi"]


def test_store_setting_is_passed_to_nix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ev = evaluator(tmp_path, LAYERED)
    monkeypatch.setenv("NIXGITOPS_NIX_STORE", "dummy://")
    assert set(ev.evaluate({}).resources) == {"base", "mid", "top.leaf"}
    monkeypatch.setenv("NIXGITOPS_NIX_STORE", "bogus://nowhere")
    with pytest.raises(EvaluationError, match="bogus"):
        ev.evaluate({})
