"""The fixture of tests/nixops4_world.py is right: NixOps4's integration-test flake, locked against the stand-in
``nixops4`` flake, evaluates the way NixOps4's evaluator would see it, its provider package builds and runs, and
the stand-in programs behave like the ones NixOps4's test puts on PATH."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import git
from nixops4_world import eval_export, integration_flake, nix, path_env, standins


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return integration_flake(tmp_path_factory.mktemp("nixops4"))


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_the_standins_greet_and_die_like_hello_and_nixops4s_die(tmp_path: Path) -> None:
    env = path_env(standins(tmp_path))
    assert run("hello", env=env).stdout == "Hello, world!\n"
    greeted = run("hello", "--greeting", "Hallo wereld", env=env)
    assert (greeted.returncode, greeted.stdout, greeted.stderr) == (0, "Hallo wereld\n", "")
    died = run("die", "oh no,", "this and that failed", env=env)
    assert (died.returncode, died.stdout, died.stderr) == (1, "", "oh no, this and that failed")


def test_the_flake_is_committed_with_its_lock_and_pins_the_standin(work: Path) -> None:
    assert git(work, "status", "--porcelain") == ""
    assert git(work, "ls-files").split() == ["flake.lock", "flake.nix"]
    lock = json.loads((work / "flake.lock").read_text())
    nixops4 = lock["nodes"][lock["nodes"]["root"]["inputs"]["nixops4"]]["locked"]
    assert (nixops4["type"], nixops4["path"]) == ("path", str(work.parent / "nixops4"))


def test_the_root_is_a_nixops4_component(work: Path) -> None:
    assert json.loads(nix("eval", "--json", ".#nixops4._type", cwd=work).stdout) == "nixops4Component"


def test_the_root_function_exports_the_deployments_resources(work: Path) -> None:
    exported = eval_export(
        work,
        """export: let
          my = export.members.myDeployment.members;
        in {
          hello = { inherit (my.hello.resource) type provider; inherit (my.hello.resource.inputs) args executable; };
          fileState = my."file.txt".resource.state;
          memoState = export.members.statefulDeployment.members.initial_version.resource.state;
        }""",
    )
    hello = exported["hello"]
    assert (hello["type"], hello["executable"], hello["args"]) == ("exec", "hello", ["--greeting", "Hallo wereld"])
    assert hello["provider"]["type"] == "stdio"
    assert hello["provider"]["executable"].startswith("/nix/store/")
    assert hello["provider"]["executable"].endswith("/bin/nixops4-resources-local")
    assert exported["fileState"] is None
    assert exported["memoState"] == ["statefulDeployment", "state"]


def test_an_output_comes_from_the_fixpoint_of_output_values(work: Path) -> None:
    select = 'export: export.members.myDeployment.members."file.txt".resource.inputs.contents'
    with pytest.raises(AssertionError, match=r"the output stdout of myDeployment\.hello is not known"):
        eval_export(work, select)


def test_the_provider_package_builds_and_the_provider_answers(work: Path) -> None:
    executable, drv = eval_export(
        work,
        """export: let
          executable = export.members.myDeployment.members.hello.resource.provider.executable;
        in [ executable (builtins.head (builtins.attrNames (builtins.getContext executable))) ]""",
    )
    assert drv.endswith("-nixops4-resources-local.drv"), drv
    built = subprocess.run(
        ["nix-store", "--option", "substituters", "", "--realise", drv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.split() == [executable.removesuffix("/bin/nixops4-resources-local")]
    answered = subprocess.run([executable], input="", capture_output=True, text=True, timeout=30, check=False)
    assert answered.returncode == 0, answered.stderr
