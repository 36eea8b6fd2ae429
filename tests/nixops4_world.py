"""NixOps4's own integration-test flake, runnable offline: a stand-in for the ``nixops4`` flake and the programs
its deployment runs.

NixOps4 tests its CLI against test/integration-test-nixops4-with-local/flake/flake.nix (in
../shared/reference/nixops4/test/), whose inputs ``@nixpkgs@``, ``@nixops4@``, ``@flake-parts@`` and ``@system@``
its check fills in. Here they are filled with ``path:`` URLs: nixpkgs' lib and flake-parts straight from
../shared/reference (Nix only reads them), and for ``nixops4`` a directory assembled in the test's temporary
directory from tests/nixops4/standin-flake.nix, NixOps4's Nix library (``nix/``) and its prebuilt local provider
(``bin/nixops4-resources-local``). That directory is a plain ``path:`` flake, not a Git repository: a ``path:``
input takes every file in it. The deployment's own flake is a Git repository with flake.nix and flake.lock
committed, as a user would have it.

Every Nix command runs with the flakes features and no substituters (there is no network), and each subprocess
is bounded by a timeout.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REFERENCE, git

STANDIN_FLAKE = Path(__file__).parent / "nixops4" / "standin-flake.nix"
NIXOPS4 = REFERENCE / "nixops4"
INTEGRATION_FLAKE = NIXOPS4 / "test" / "integration-test-nixops4-with-local" / "flake" / "flake.nix"
PROVIDER_BINARY = NIXOPS4 / "bin" / "nixops4-resources-local"
NIXPKGS_LIB = REFERENCE / "nixpkgs-lib"
FLAKE_PARTS = REFERENCE / "flake-parts"

# The flakes features (Nix 2.8 has them as experimental) and no binary cache, on every Nix command.
NIX = ["nix", "--extra-experimental-features", "nix-command flakes", "--option", "substituters", ""]

# GNU hello's interface, as far as the integration flake uses it: `hello` greets the world, `hello --greeting X`
# (or -g X, --greeting=X) prints X and a newline.
HELLO = """#!/bin/sh
greeting='Hello, world!'
while [ $# -gt 0 ]; do
  case "$1" in
    -g|--greeting)
      if [ $# -lt 2 ]; then echo "hello: option '$1' requires an argument" >&2; exit 1; fi
      greeting=$2; shift 2 ;;
    --greeting=*) greeting=${1#--greeting=}; shift ;;
    *) echo "hello: unrecognized option '$1'" >&2; exit 1 ;;
  esac
done
printf '%s\\n' "$greeting"
"""

# NixOps4's `die` package: its arguments on stderr (without a newline, as NixOps4's), and exit 1.
DIE = """#!/bin/sh
printf '%s' "$*" >&2
exit 1
"""

# A Nix function of NixOps4's root component (the flake output `nixops4`) that calls its `rootFunction` the way
# NixOps4's evaluator does (rust/nixops4-eval/src/eval.rs, evaluate_root_component): `outputValues` is built from
# the `outputsSkeleton` of each resource in the very `_export` tree the call returns. Where NixOps4 loads a
# resource's real output, each leaf here throws, so whatever needs an output fails and everything else evaluates.
# `@SYSTEM@` is the resource provider system; `@SELECT@` is a function of the `_export` tree that picks what to show.
FIXPOINT = """root:
let
  inherit (builtins) concatStringsSep mapAttrs;
  unknown = path: name: attr: _:
    throw "nixops4_world: the output ${attr} of ${concatStringsSep "." (path ++ [ name ])} is not known";
  outputsOf = path: export:
    mapAttrs
      (name: member:
        if member ? resource
        then mapAttrs (unknown path name) member.resource.outputsSkeleton
        else outputsOf (path ++ [ name ]) member)
      (export.members or { });
  fixpoint = root.rootFunction {
    resourceProviderSystem = "@SYSTEM@";
    outputValues = outputsOf [ ] fixpoint;
  };
in
(@SELECT@) fixpoint
"""


def nix(
    *args: str, cwd: Path | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``nix <args>`` with flakes and no substituters, in ``cwd``; fails the test with Nix's stderr unless it
    succeeds (or ``check`` is false)."""
    done = subprocess.run(
        [*NIX, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"nix {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return done


@functools.cache
def nix_system() -> str:
    """The system Nix builds for here, as Nix names it (``x86_64-linux``)."""
    return nix("eval", "--impure", "--raw", "--expr", "builtins.currentSystem", timeout=60).stdout


def eval_export(work: Path, select: str, *, timeout: float = 120) -> Any:
    """The JSON of ``select`` (a Nix function) applied to the `_export` tree of the flake output ``nixops4`` of the
    flake ``work``, evaluated as NixOps4 evaluates it (see FIXPOINT), for this system."""
    apply = FIXPOINT.replace("@SYSTEM@", nix_system()).replace("@SELECT@", select)
    return json.loads(nix("eval", "--json", ".#nixops4", "--apply", apply, cwd=work, timeout=timeout).stdout)


def standins(tmp: Path) -> Path:
    """A directory, for PATH, with the programs the integration flake runs: ``hello`` and ``die``."""
    directory = tmp / "standins"
    directory.mkdir(parents=True, exist_ok=True)
    for name, script in (("hello", HELLO), ("die", DIE)):
        program = directory / name
        program.write_text(script)
        program.chmod(0o755)
    return directory


def _fill(text: str, what: str, values: dict[str, str]) -> str:
    """``text`` with each ``@key@`` replaced; every placeholder must occur, and none may be left."""
    for key, value in values.items():
        placeholder = f"@{key}@"
        assert placeholder in text, f"{placeholder} is not in {what}"
        text = text.replace(placeholder, value)
    left = re.findall(r"@[a-z-]+@", text)
    assert not left, f"placeholders of {what} are left: {left}"
    return text


def _writable(root: Path) -> None:
    """Copies of ../shared keep its read-only modes; make them the owner's to change and to delete."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _require_reference() -> None:
    needed = [NIXOPS4 / "nix" / "lib" / "lib.nix", PROVIDER_BINARY, INTEGRATION_FLAKE]
    needed += [NIXPKGS_LIB / "flake.nix", FLAKE_PARTS / "flake.nix"]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.skip(f"NixOps4's reference files are missing ({', '.join(missing)}); CI has ../shared beside the clone")
    if shutil.which("nix") is None:
        pytest.skip("nix is not installed (make setup installs nix-bin)")
    if nix_system() != "x86_64-linux":
        pytest.skip(f"NixOps4's prebuilt local provider is for x86_64-linux, this is {nix_system()}")


def standin_nixops4(tmp: Path) -> Path:
    """The stand-in ``nixops4`` flake: ``tmp/nixops4`` with flake.nix, ``nix/`` and ``bin/nixops4-resources-local``.
    No flake.lock: the flake that takes it as an input locks its inputs."""
    _require_reference()
    directory = tmp / "nixops4"
    shutil.copytree(NIXOPS4 / "nix", directory / "nix")
    (directory / "bin").mkdir()
    shutil.copyfile(PROVIDER_BINARY, directory / "bin" / "nixops4-resources-local")
    _writable(directory)
    (directory / "bin" / "nixops4-resources-local").chmod(0o755)
    text = _fill(
        STANDIN_FLAKE.read_text(),
        str(STANDIN_FLAKE),
        {"nixpkgs": f"path:{NIXPKGS_LIB.resolve()}", "flake-parts": f"path:{FLAKE_PARTS.resolve()}"},
    )
    (directory / "flake.nix").write_text(text)
    return directory


def integration_flake(tmp: Path) -> Path:
    """NixOps4's integration-test flake, locked against the stand-in ``nixops4`` and committed (flake.nix and
    flake.lock) in a new Git repository ``tmp/work`` on branch main, which is returned. Skips the test where
    ../shared/reference is absent."""
    _require_reference()
    tmp.mkdir(parents=True, exist_ok=True)
    nixops4 = standin_nixops4(tmp)
    work = tmp / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    text = _fill(
        INTEGRATION_FLAKE.read_text(),
        str(INTEGRATION_FLAKE),
        {
            "nixpkgs": f"path:{NIXPKGS_LIB.resolve()}",
            "nixops4": f"path:{nixops4.resolve()}",
            "flake-parts": f"path:{FLAKE_PARTS.resolve()}",
            "system": nix_system(),
        },
    )
    (work / "flake.nix").write_text(text)
    git(work, "add", "flake.nix")  # a Git flake sees only the files Git knows
    nix("flake", "lock", cwd=work)
    git(work, "add", "flake.lock")
    git(work, "commit", "-q", "-m", "NixOps4's integration-test flake, locked")
    return work


def path_env(directory: Path) -> dict[str, str]:
    """This process's environment with ``directory`` (e.g. :func:`standins`) in front of PATH."""
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"}
