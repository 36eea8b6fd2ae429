"""Bad input: each case gives a clear message, a non-zero exit, no traceback, and loses nothing in state."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Checkout, assert_clean_error

BASE = """
{ members, providers, ... }:
{
  members.kept = { type = providers.local.memo; inputs.initialize_with = "kept"; };
  EXTRA
}
"""


@pytest.fixture
def applied(checkout: Checkout) -> Checkout:
    """A checkout whose state already holds one resource, which every failure must leave in place."""
    checkout.deploy(BASE.replace("EXTRA", ""))
    checkout.ok("apply", "--yes")
    return checkout


def still_kept(checkout: Checkout) -> None:
    assert checkout.state()["kept"]["outputs"] == {"value": "kept"}


@pytest.mark.parametrize("command", [("plan",), ("apply", "--yes")])
def test_nix_syntax_error(applied: Checkout, command: tuple[str, ...]) -> None:
    applied.deploy(BASE.replace("EXTRA", "members.x = { type = ; };"))
    done = applied.run(*command)
    assert_clean_error(done, "syntax error", "deployment.nix:5:")
    still_kept(applied)


def test_evaluation_error_in_one_resource(applied: Checkout) -> None:
    applied.deploy(
        BASE.replace("EXTRA", 'members.x = { type = providers.local.memo; inputs.initialize_with = 1 + "a"; };')
    )
    done = applied.run("apply", "--yes")
    assert_clean_error(done, "cannot add a string to an integer", "deployment.nix:5:")
    still_kept(applied)


def test_user_throw_names_resource_field_and_location(applied: Checkout) -> None:
    applied.deploy(
        BASE.replace("EXTRA", 'members.x = { type = providers.local.memo; inputs.initialize_with = throw "no way"; };')
    )
    done = applied.run("apply", "--yes")
    assert_clean_error(done, "no way", "'initialize_with' of resource 'x'", "deployment.nix:5:")
    still_kept(applied)


def test_user_assert_is_not_mistaken_for_an_unknown_output(applied: Checkout) -> None:
    applied.deploy(
        BASE.replace(
            "EXTRA",
            "members.x = { type = providers.local.memo;"
            ' inputs.initialize_with = assert members.kept.inputs.initialize_with == "other"; 1; };',
        )
    )
    assert_clean_error(applied.run("plan"), "assertion", "resource 'x'")


def test_cycle_names_every_resource_on_it(applied: Checkout) -> None:
    applied.deploy(
        BASE.replace(
            "EXTRA",
            """
  members.a = { type = providers.local.memo; inputs.initialize_with = members.c.outputs.value; };
  members.b = { type = providers.local.memo; inputs.initialize_with = members.a.outputs.value; };
  members.c = { type = providers.local.memo; inputs.initialize_with = members.b.outputs.value; };
  members.free = { type = providers.local.memo; inputs.initialize_with = 1; };
""",
        )
    )
    for command in (("plan",), ("apply", "--yes")):
        done = applied.run(*command)
        assert_clean_error(done, "cycle")
        cycle_line = next(line for line in done.stderr.splitlines() if "cycle" in line)
        for name in ("a", "b", "c"):
            assert f"{name} ->" in cycle_line or f"-> {name}" in cycle_line
    still_kept(applied)
    assert "free" not in applied.state()


def test_reference_to_a_missing_member(applied: Checkout) -> None:
    applied.deploy(
        BASE.replace(
            "EXTRA", "members.x = { type = providers.local.memo; inputs.initialize_with = members.nope.outputs.v; };"
        )
    )
    assert_clean_error(applied.run("apply", "--yes"), "attribute 'nope' missing", "deployment.nix:5:")
    still_kept(applied)


@pytest.mark.parametrize(
    ("type_expr", "needle"),
    [
        ('"cloud.vm"', "the provider 'cloud', which is not declared"),
        ('"local.vm"', "provider 'local' has no resource type 'vm'"),
        ("providers.local.vm", "attribute 'vm' missing"),
        ("providers.cloud.vm", "attribute 'cloud' missing"),
        ("42", "`type` must be a provider's resource type"),
    ],
)
def test_unknown_provider_or_resource_type(applied: Checkout, type_expr: str, needle: str) -> None:
    applied.deploy(BASE.replace("EXTRA", f"members.x = {{ type = {type_expr}; inputs = {{ }}; }};"))
    assert_clean_error(applied.run("apply", "--yes"), needle)
    still_kept(applied)


def test_inputs_that_are_functions(applied: Checkout) -> None:
    applied.deploy(
        BASE.replace("EXTRA", "members.x = { type = providers.local.memo; inputs.initialize_with = { f = x: x; }; };")
    )
    assert_clean_error(applied.run("plan"), "input 'initialize_with.f' is a function", "member 'x'")
    still_kept(applied)


def test_member_that_is_neither_resource_nor_composite(applied: Checkout) -> None:
    applied.deploy(BASE.replace("EXTRA", "members.x = { inputs = { }; };"))
    assert_clean_error(applied.run("plan"), "member 'x'", "neither `type`")


def test_missing_entry_file(checkout: Checkout) -> None:
    assert_clean_error(checkout.run("plan"), "deployment.nix does not exist")


def test_outside_a_git_repository(tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    directory = Path(str(tmp_path)) / "plain"
    directory.mkdir()
    (directory / "deployment.nix").write_text("{ ... }: { }")
    done = subprocess.run(
        [sys.executable, "-m", "controller", "plan", "--dir", str(directory)],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    assert_clean_error(done, "not inside a Git repository", "git init")


PROVIDER_FAILURES = [
    ("refuse", "refused createResourceRequest for 'bad': notes: refusing on purpose"),
    ("crash", "exited while handling createResourceRequest for 'bad'"),
    ("garbage", "broke the protocol answering createResourceRequest for 'bad': the line is not JSON"),
    ("wrongkind", "expected createResourceResponse or errorResponse, got updateResourceResponse"),
    ("hang", "did not answer createResourceRequest for 'bad' within 2s"),
]


@pytest.mark.parametrize(("mode", "needle"), PROVIDER_FAILURES)
def test_misbehaving_provider(applied: Checkout, notes_provider: Callable[[], str], mode: str, needle: str) -> None:
    applied.deploy(
        BASE.replace(
            "EXTRA",
            notes_provider()
            + f"""
  members.good = {{ type = providers.notes.note; inputs.text = "fine"; }};
  members.bad = {{ type = providers.notes.note; inputs = {{ text = "x"; mode = "{mode}"; }}; }};
  members.reader = {{ type = providers.notes.note; inputs.text = members.bad.outputs.id; }};
  members.sibling = {{ type = providers.local.memo; inputs.initialize_with = members.good.outputs.id; }};
""",
        )
    )
    done = applied.run("apply", "--yes", "--provider-timeout", "2")
    assert_clean_error(done, needle, "bad")
    assert "reader: skipped: it reads outputs of bad, which failed" in done.stdout
    state = applied.state()
    assert {"kept", "good", "sibling"} <= set(state), "independent resources are applied and recorded"
    assert "bad" not in state and "reader" not in state
    if mode == "crash":
        assert "crashing on purpose" in done.stderr, "the provider's last stderr lines are shown"


def test_missing_provider_executable(applied: Checkout) -> None:
    applied.deploy(
        BASE.replace(
            "EXTRA",
            """providers.ghost = { executable = "/nonexistent/provider"; resourceTypes = [ "thing" ]; };
  members.x = { type = providers.ghost.thing; inputs = { }; };""",
        )
    )
    done = applied.run("apply", "--yes")
    assert_clean_error(done, "Cannot start provider 'ghost' (/nonexistent/provider)", "providers.ghost.executable")
    still_kept(applied)


def test_bad_provider_declaration(applied: Checkout) -> None:
    applied.deploy(BASE.replace("EXTRA", 'providers.p = { executable = "/bin/true"; resourceTypes = "x"; };'))
    assert_clean_error(applied.run("plan"), "providers.p", "resourceTypes")


def test_local_exec_mistakes_are_errors_not_crashes(applied: Checkout) -> None:
    applied.deploy(
        BASE.replace(
            "EXTRA",
            'members.x = { type = providers.local.exec; inputs = { executable = "/etc/passwd"; args = [ ]; }; };'
            ' members.y = { type = providers.local.exec; inputs = { executable = "printf"; args = [ "\\\\377" ]; }; };',
        )
    )
    done = applied.run("apply", "--yes")
    assert_clean_error(done, "local.exec", "could not start")
    assert "Traceback" not in done.stdout
    assert applied.state()["y"]["outputs"]["stdout"] == "\ufffd"
