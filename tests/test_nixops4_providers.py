"""NixOps4's real local provider through nixgitops: create and update of every resource type it offers (file,
exec, memo, state_file), in both syntaxes (deployment.nix with resourceTypes in NixOps4's shape, and a NixOps4
root), and removal with both of its builds (main's does not know destroyResourceRequest, tfproto's answers "not
implemented"), which must end cleanly: the resource forgotten with a warning, the deployment never stuck.

It also checks what nixgitops sends: a stateless resource is created again on every apply with ``isStateful:
false`` and never updated, a stateful one is updated (a logging wrapper records the requests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REFERENCE, Checkout, git, nixops4_local
from nixops4_world import FLAKE_PARTS, NIXPKGS_LIB, nix, nix_system, standin_nixops4

TFPROTO = REFERENCE / "nixops4" / "bin" / "nixops4-resources-local-tfproto"

DEPLOYMENT = """{ members, providers, ... }: {
  providers.nix4 = {
    executable = "BINARY";
    resourceTypes = { file.requireState = false; exec.requireState = false; state_file.requireState = false;
                      memo.requireState = true; };
  };
  members.store = { type = providers.nix4.state_file; inputs.name = "state.json"; };
  members.f = { type = providers.nix4.file; inputs = { name = "f.txt"; contents = "CONTENTS"; }; };
  members.e = { type = providers.nix4.exec; inputs = { executable = "/bin/sh"; args = [ "-c" "echo ECHO" ]; }; };
  members.m = { type = providers.nix4.memo; state = members.store; inputs.initialize_with = "MEMO"; };
  members.r = { type = providers.nix4.file; inputs = { name = "r.txt"; contents = members.e.outputs.stdout; }; };
}
"""


def wrapper(tmp: Path, binary: Path) -> tuple[Path, Path]:
    """A script that runs ``binary`` and appends every request line it is sent to a log: (script, log)."""
    log = tmp / "requests.log"
    script = tmp / "nixops4-logged"
    script.write_text(f'#!/bin/sh\ntee -a "{log}" | "{binary}"\n')  # (only for providers that answer every request)
    script.chmod(0o755)
    return script, log


def requests(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def deployment(binary: Path, contents: str = "C1", echo: str = "E1", memo: str = "M1", drop: str = "") -> str:
    text = DEPLOYMENT.replace("BINARY", str(binary)).replace("CONTENTS", contents).replace("ECHO", echo)
    text = text.replace("MEMO", memo)
    for name in drop.split():
        text = "\n".join(line for line in text.splitlines() if not line.startswith(f"  members.{name} ="))
    return text


def test_every_type_created_and_updated_in_deployment_nix(checkout: Checkout, tmp_path: Path) -> None:
    script, log = wrapper(tmp_path, nixops4_local())
    checkout.deploy(deployment(script))
    checkout.ok("apply", "--yes")
    work = checkout.path
    assert (work / "f.txt").read_text() == "C1"
    assert (work / "r.txt").read_text() == "E1\n"
    assert (work / "state.json").stat().st_size > 0
    state = checkout.state()
    assert state["e"]["outputs"] == {"stdout": "E1\n"}
    assert state["m"]["outputs"] == {"value": "M1"}
    assert state["m"]["stateHandler"] == "store"
    assert {p for p, r in state.items() if r.get("stateless")} == {"store", "f", "e", "r"}
    sent = requests(log)
    assert all("createResourceRequest" in r for r in sent)
    stateful = {r["createResourceRequest"]["type"]: r["createResourceRequest"]["isStateful"] for r in sent}
    assert stateful == {"state_file": False, "file": False, "exec": False, "memo": True}

    # update: the stateless ones are made again (never an update request), the memo is updated and keeps M1
    log.unlink()
    checkout.deploy(deployment(script, contents="C2", echo="E2", memo="M2"))
    plan = checkout.plan()
    assert plan["m"]["action"] == "update" and plan["m"]["reason"] == "inputs changed: initialize_with"
    assert plan["f"]["reason"] == "stateless: made again on every apply"
    checkout.ok("apply", "--yes")
    assert (work / "f.txt").read_text() == "C2"
    assert (work / "r.txt").read_text() == "E2\n"
    assert checkout.state()["m"]["outputs"] == {"value": "M1"}, "a memo keeps its first value"
    sent = requests(log)
    kinds = sorted(next(iter(r)) for r in sent)
    assert kinds == ["createResourceRequest"] * 4 + ["updateResourceRequest"], kinds
    (update,) = [r["updateResourceRequest"] for r in sent if "updateResourceRequest" in r]
    assert update["resource"]["type"] == "memo" and update["inputProperties"] == {"initialize_with": "M2"}

    # no change in the deployment: the stateless resources are made again all the same, as NixOps4 does
    (work / "f.txt").unlink()
    log.unlink()
    checkout.ok("apply", "--yes")
    assert (work / "f.txt").read_text() == "C2", "a file removed by hand is written again"
    assert sorted(next(iter(r)) for r in requests(log)) == ["createResourceRequest"] * 4


@pytest.mark.parametrize("build", ["main", "tfproto"])
def test_removing_resources_ends_cleanly_with_both_builds(checkout: Checkout, tmp_path: Path, build: str) -> None:
    binary = nixops4_local() if build == "main" else TFPROTO
    if not binary.exists():
        pytest.skip(f"{binary} is absent (CI has ../shared beside the clone)")
    checkout.deploy(deployment(binary))
    checkout.ok("apply", "--yes")

    checkout.deploy(deployment(binary, drop="m r"))
    plan = checkout.plan()
    assert plan["m"]["action"] == "delete" and plan["r"]["action"] == "delete"
    done = checkout.ok("apply", "--yes")
    assert "Warning: m: forgotten, not deleted: provider 'nix4' cannot delete a 'memo'" in done.stderr
    assert "Warning: r: forgotten: a stateless resource has nothing to delete" in done.stderr
    assert set(checkout.state()) == {"store", "f", "e"}
    assert (checkout.path / "r.txt").exists(), "what the provider made is left as it is"

    # nothing is stuck: the next apply works and has nothing to delete
    checkout.deploy(deployment(binary, contents="C3", drop="m r"))
    done = checkout.ok("apply", "--yes")
    assert "forgotten" not in done.stderr
    assert (checkout.path / "f.txt").read_text() == "C3"

    # destroy: the rest goes the same way
    done = checkout.ok("destroy", "--yes")
    assert checkout.state() == {}


ROOT_FLAKE = """{
  inputs = {
    nixpkgs.url = "NIXPKGS";
    nixops4.url = "NIXOPS4";
    flake-parts.url = "FLAKE_PARTS";
    flake-parts.inputs.nixpkgs-lib.follows = "nixpkgs";
  };
  outputs = inputs@{ flake-parts, ... }:
    flake-parts.lib.mkFlake { inherit inputs; } {
      imports = [ inputs.nixops4.modules.flake.default ];
      systems = [ "SYSTEM" ];
      nixops4 = { providers, members, ... }: {
        providers.local = inputs.nixops4.modules.nixops4Provider.local;
        members.all = { members, ... }: {
          members.store = { type = providers.local.state_file; inputs.name = "state.json"; };
          members."f.txt" = { type = providers.local.file; inputs = { name = "f.txt"; contents = "CONTENTS"; }; };
          members.e = {
            type = providers.local.exec;
            inputs = { executable = "/bin/sh"; args = [ "-c" "echo ECHO" ./flake.nix ]; };
          };
          members.m = { type = providers.local.memo; state = members.store; inputs.initialize_with = MEMO; };
        };
      };
    };
}
"""


def test_every_type_created_and_updated_in_a_nixops4_root(tmp_path: Path) -> None:
    standin = standin_nixops4(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")

    def write(contents: str, echo: str, memo: str) -> None:
        text = ROOT_FLAKE.replace("NIXPKGS", f"path:{NIXPKGS_LIB.resolve()}").replace("NIXOPS4", f"path:{standin}")
        text = text.replace("FLAKE_PARTS", f"path:{FLAKE_PARTS.resolve()}").replace("SYSTEM", nix_system())
        (work / "flake.nix").write_text(text.replace("CONTENTS", contents).replace("ECHO", echo).replace("MEMO", memo))
        git(work, "add", "-A")
        if not (work / "flake.lock").exists():
            nix("flake", "lock", cwd=work)
            git(work, "add", "-A")
        git(work, "commit", "-q", "-m", "change")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "controller", *args, "--flake", ".#nixops4"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def record(path: str) -> dict[str, Any]:
        return json.loads(  # type: ignore[no-any-return]
            subprocess.run(
                [sys.executable, "-m", "controller", "state", "show", path],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )

    write("C1", "E1", "1")
    plan = json.loads(run("plan", "--json").stdout)
    e = next(c for c in plan["changes"] if c["path"] == "all.e")
    # NixOps4's module coerced the path to a string (its coercion of an integer, "${x}", fails in Nix itself:
    # "cannot coerce an integer to a string")
    assert e["after"]["args"][:2] == ["-c", "echo E1"] and e["after"]["args"][2].endswith("-flake.nix")
    assert e["after"]["once"] is False and e["after"]["stdin"] is None, "and filled in its defaults"
    run("apply", "--yes")
    assert (work / "f.txt").read_text() == "C1"
    assert record("all.e")["outputs"] == {"stdout": "E1\n"}
    assert record("all.m")["outputs"] == {"value": 1}
    assert record("all.m")["stateHandler"] == "all.store"
    assert record('all."f.txt"')["stateless"] is True
    assert (work / "state.json").stat().st_size > 0

    write("C2", "E2", "2")
    run("apply", "--yes")
    assert (work / "f.txt").read_text() == "C2"
    assert record("all.e")["outputs"] == {"stdout": "E2\n"}
    assert record("all.m")["outputs"] == {"value": 1}, "a memo keeps its first value"
    assert record("all.m")["inputs"] == {"initialize_with": 2}

    # destroy: a root names no provider of its own; the recorded command serves the deletes
    done = run("destroy", "--yes")
    assert "Warning: all.m: forgotten, not deleted: provider 'nixops4-resources-local' cannot delete" in done.stderr
    assert "Warning: all.e: forgotten: a stateless resource has nothing to delete" in done.stderr
    state = subprocess.run(
        [sys.executable, "-m", "controller", "state", "list", "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(state.stdout) == []
    shutil.rmtree(standin)  # (the store keeps its copy)


def test_a_replace_whose_old_resource_cannot_be_deleted_forgets_it_and_creates_the_new(checkout: Checkout) -> None:
    binary = nixops4_local()
    checkout.deploy(deployment(binary, drop="r"))
    checkout.ok("apply", "--yes")
    changed = deployment(binary, drop="r").replace(
        'members.m = { type = providers.nix4.memo; state = members.store; inputs.initialize_with = "M1"; };',
        'members.m = { type = providers.nix4.exec; inputs = { executable = "/bin/echo"; args = [ "now" ]; }; };',
    )
    assert changed != deployment(binary, drop="r")
    checkout.deploy(changed)
    assert checkout.plan()["m"]["action"] == "replace"
    done = checkout.ok("apply", "--yes")
    assert "Warning: m: forgotten, not deleted" in done.stderr
    record = checkout.state()["m"]
    assert record["type"] == "nix4.exec" and record["outputs"] == {"stdout": "now\n"}
