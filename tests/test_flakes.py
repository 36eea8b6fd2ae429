"""Flakes end to end: a deployment that is a flake output, evaluated purely with the inputs its flake.lock pins.

Real Nix, real Git, the real command line and controller processes. The flakes take nixpkgs' lib and flake-parts
from ../shared/reference as ``path:`` inputs, locked by the tests' set-up (nixgitops itself never locks), and
build small programs with ``builtins.derivation`` and /bin/sh: an executable for ``local.exec``, and a provider
built from the repository's own files (tests/flakes/greet_provider.py, copied in as ``provider.py``). The flakes
are templates in tests/flakes/*.nix; a program that must be built by the test carries a fresh nonce, so every run of
the suite builds it again instead of finding it in the store.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REFERENCE, Checkout, assert_clean_error, git
from gitserver import Developer, GitServer, free_port

needs_reference = pytest.mark.skipif(
    not (REFERENCE / "nixpkgs-lib" / "flake.nix").is_file() or not (REFERENCE / "flake-parts" / "flake.nix").is_file(),
    reason=f"nixpkgs-lib and flake-parts are not in {REFERENCE} (CI has ../shared beside the clone)",
)

NIX_FLAKES = ["nix", "--extra-experimental-features", "nix-command flakes"]
FLAKES = Path(__file__).parent / "flakes"
GREET_PROVIDER = FLAKES / "greet_provider.py"
STORE_PATH = r"/nix/store/[0-9a-z]{32}-"

# -- the flakes: templates in tests/flakes/ --------------------------------------------------------------------


def flake(template: str, **values: str) -> str:
    """The text of tests/flakes/``template``.nix with each ``@KEY@`` replaced; ``@REFERENCE@`` (the absolute path of
    ../shared/reference) and ``@NONCE@`` (fresh each time) unless given."""
    text = (FLAKES / f"{template}.nix").read_text()
    values = {"REFERENCE": str(REFERENCE.resolve()), "NONCE": secrets.token_hex(8), **values}
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    assert not re.search(r"@[A-Z_]+@", text), f"a placeholder of {template}.nix is left:\n{text}"
    return text


def good_tool(text: str) -> str:
    return f"echo '#!/bin/sh' > $out; echo 'echo tool {text}' >> $out; chmod +x $out"


BROKEN_TOOL = "echo 'the tool does not build, on purpose' >&2; exit 1"


# -- helpers ---------------------------------------------------------------------------------------------------


def nix_lock(directory: Path) -> None:
    """What a user runs before committing a flake: ``nix flake lock`` (the flake's files must be known to Git)."""
    git(directory, "add", "-A")
    done = subprocess.run(
        [*NIX_FLAKES, "flake", "lock", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (directory / "flake.lock").is_file()


def nix_system() -> str:
    """The system Nix builds for here, as Nix itself names it."""
    done = subprocess.run(
        [*NIX_FLAKES, "eval", "--impure", "--raw", "--expr", "builtins.currentSystem"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The nixgitops command line, run in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def changes(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    """The changes of ``plan --json``, by path."""
    return {c["path"]: c for c in json.loads(ok(done).stdout)["changes"]}


def state_head(repo: Path) -> str | None:
    """The commit of the local state branch, or None when there is none."""
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", "refs/heads/nixgitops/state"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout.strip() or None


def roots(directory: Path) -> set[str]:
    """The store paths that a garbage-collector roots directory holds symlinks to."""
    return {os.readlink(link) for link in directory.iterdir() if link.is_symlink()} if directory.is_dir() else set()


@pytest.fixture
def repo(tmp_path: Path) -> Checkout:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return Checkout(path)


# -- the command line ------------------------------------------------------------------------------------------


@needs_reference
def test_a_flake_with_nixpkgs_lib_and_flake_parts_is_built_and_applied(repo: Checkout) -> None:
    repo.write(flake("parts"), "flake.nix")
    nix_lock(repo.path)
    source = repo.commit("a flake")

    plan = ok(repo.run("plan", "--flake"))
    assert "+ hello (local.exec)" in plan.stdout and "+ alpha (local.memo)" in plan.stdout, plan.stdout
    assert re.search(rf'executable += "{STORE_PATH}hello"', plan.stdout), plan.stdout
    assert "Plan: 3 to create, 0 to update, 0 to replace, 0 to delete." in plan.stdout
    planned = changes(repo.run("plan", "--flake", "--json"))
    assert planned["alpha"]["after"] == {"initialize_with": "ALPHA"}  # lib.genAttrs and lib.toUpper
    assert planned["beta"]["after"] == {"initialize_with": "BETA"}
    executable = planned["hello"]["after"]["executable"]
    assert not os.path.exists(executable), "a plan builds nothing"

    applied = ok(repo.run("apply", "-y", "--flake"))
    assert "Apply complete! Resources: 3 created" in applied.stdout
    assert re.search(rf"\[build\] building '{STORE_PATH}hello\.drv'", applied.stderr), "the build log is forwarded"
    hello = json.loads(ok(repo.run("state", "show", "hello", "--flake")).stdout)
    assert hello["outputs"] == {"stdout": f"built by Nix for {nix_system()}\n"}, "the program Nix built ran"
    assert hello["inputs"]["executable"] == executable and hello["storePaths"] == [executable]
    assert os.access(executable, os.X_OK)
    assert executable in roots(repo.path / ".git" / "nixgitops" / "default.gcroots")
    assert {p: r["outputs"] for p, r in repo.state().items() if p != "hello"} == {
        "alpha": {"value": "ALPHA"},
        "beta": {"value": "BETA"},
    }
    assert repo.state_log()[0].startswith(f"Apply {source[:12]}: +3 ~0 -0")

    assert "No changes" in ok(repo.run("plan", "--flake")).stdout


@needs_reference
def test_a_named_output_of_a_flake_in_a_subdirectory_from_elsewhere(repo: Checkout, tmp_path: Path) -> None:
    infra = repo.path / "infra"
    infra.mkdir()
    (infra / "flake.nix").write_text(flake("stages"))
    nix_lock(infra)
    repo.commit("two deployments in infra/")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    staging = ("--dir", str(repo.path), "--flake", "infra#deployments.staging")

    planned = changes(cli(elsewhere, "plan", "--json", *staging))
    assert {p: c["action"] for p, c in planned.items()} == {"stage": "create"}
    assert planned["stage"]["after"] == {"initialize_with": "STAGING"}
    ok(cli(elsewhere, "apply", "-y", *staging))
    listed = json.loads(ok(cli(elsewhere, "state", "list", "--json", *staging)).stdout)
    assert [(r["path"], r["outputs"]) for r in listed] == [("stage", {"value": "STAGING"})]
    assert not any(elsewhere.iterdir()), "nothing is written where the command runs"

    # REF without an attribute is the default output, nixgitops, of the same flake
    default = changes(cli(elsewhere, "plan", "--json", "--dir", str(repo.path), "--flake", "infra"))
    assert {p: c["action"] for p, c in default.items()} == {"production": "create", "stage": "delete"}


def assert_refused_for_the_lock(repo: Checkout, *, lock_before: bytes | None, state_before: str | None) -> None:
    """``plan`` and ``apply`` refuse the flake, say to run ``nix flake lock``, and write nothing: not flake.lock,
    not the work tree, not the state branch."""
    runs = [repo.run("plan", "--flake"), repo.run("apply", "-y", "--flake")]
    for done in runs:
        assert_clean_error(done)
        assert "Creating" not in done.stdout, done.stdout
        lock = repo.path / "flake.lock"
        assert (lock.read_bytes() if lock.exists() else None) == lock_before, "flake.lock was written"
        assert git(repo.path, "status", "--porcelain") == "", "the work tree changed"
        assert state_head(repo.path) == state_before, "the state branch changed"
        assert "run `nix flake lock`" in done.stderr, done.stderr


@needs_reference
def test_a_flake_without_a_lock_file_is_refused_and_not_locked(repo: Checkout) -> None:
    repo.write(flake("lib-input", MORE_INPUTS=""), "flake.nix")
    repo.commit("a flake, never locked")
    assert_refused_for_the_lock(repo, lock_before=None, state_before=None)


@needs_reference
def test_a_flake_whose_lock_file_is_out_of_date_is_refused_and_not_relocked(repo: Checkout, tmp_path: Path) -> None:
    repo.write(flake("lib-input", MORE_INPUTS=""), "flake.nix")
    nix_lock(repo.path)
    repo.commit("locked")
    ok(repo.run("apply", "-y", "--flake"))
    assert repo.state()["m"]["outputs"] == {"value": "LOCKED"}
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "flake.nix").write_text('{ outputs = { self }: { text = "extra"; }; }')
    repo.write(flake("lib-input", MORE_INPUTS=f'inputs.extra.url = "path:{extra}";'), "flake.nix")
    repo.commit("a new input, not locked")
    lock = (repo.path / "flake.lock").read_bytes()
    assert_refused_for_the_lock(repo, lock_before=lock, state_before=state_head(repo.path))


def test_a_flake_sees_no_environment(repo: Checkout) -> None:
    repo.write(flake("impure", OUTSIDE="/nonexistent"), "flake.nix")
    repo.commit("reads the environment")
    planned = changes(cli(repo.path, "plan", "--json", "--flake", env={"HOME": str(repo.path)}))
    assert planned["env"]["after"] == {"initialize_with": "HOME="}, "builtins.getEnv is empty in pure evaluation"
    assert planned["system"]["after"] == {"initialize_with": nix_system()}, "the system comes as an argument"


@pytest.mark.parametrize(
    ("attribute", "needle"),
    [("outside", "forbidden in pure eval mode"), ("current", "currentSystem")],
)
def test_a_flake_that_reads_outside_itself_fails_clearly(
    repo: Checkout, tmp_path: Path, attribute: str, needle: str
) -> None:
    outside = tmp_path / "outside.txt"  # exists and is readable: only purity refuses it
    outside.write_text("not the flake's\n")
    repo.write(flake("impure", OUTSIDE=str(outside)), "flake.nix")
    repo.commit("reads outside the flake")
    for args in (["plan"], ["apply", "-y"]):
        done = repo.run(*args, "--flake", f".#{attribute}")
        assert_clean_error(done, needle, "A flake is evaluated purely", f"#{attribute}")
        assert "Creating" not in done.stdout
    assert state_head(repo.path) is None


# -- the controller --------------------------------------------------------------------------------------------


@pytest.fixture
def dev(server: GitServer, tmp_path: Path) -> Developer:
    return Developer(server, tmp_path)


def configure_flake(tmp_path: Path, url: str) -> Path:
    """The controller's configuration: deployment ``web``, the output ``nixgitops`` of the repository's flake."""
    config = tmp_path / "nixgitops.toml"
    config.write_text(
        f'[controller]\ndata_dir = "{tmp_path / "data"}"\n\n[server]\nlisten = "127.0.0.1:{free_port()}"\n\n'
        f'[deployments.web]\nrepository = "{url}"\ninterval = "1h"\ndrift_interval = "off"\nflake = "nixgitops"\n'
        'nix_options = { substituters = "" }\n'
    )
    return config


def reconcile(config: Path) -> subprocess.CompletedProcess[str]:
    return cli(config.parent, "reconcile", "web", "--config", str(config))


def push_flake(dev: Developer, files: dict[str, str], message: str) -> str:
    """Write ``files`` into the developer's clone, lock the flake as a user would, commit and push; the commit."""
    for name, text in files.items():
        (dev.work / name).write_text(text)
    nix_lock(dev.work)
    git(dev.work, "add", "-A")
    git(dev.work, "commit", "-q", "-m", message)
    git(dev.work, "push", "-q", "origin", "HEAD:refs/heads/main")
    return git(dev.work, "rev-parse", "HEAD").strip()


def served_record(dev: Developer, path: str) -> dict[str, Any]:
    """A resource's record on the state branch the controller pushed."""
    names = git(dev.bare, "ls-tree", "-r", "--name-only", "nixgitops/state", "web/resources/").split()
    (name,) = [n for n in names if Path(n).name == f"{path}.json"]
    return json.loads(git(dev.bare, "show", f"nixgitops/state:{name}"))  # type: ignore[no-any-return]


def greet_files(version: str, name: str) -> dict[str, str]:
    provider = GREET_PROVIDER.read_text()
    assert 'VERSION = "1"' in provider
    return {
        "flake.nix": flake("greet", PYTHON=sys.executable, NAME=name),
        "provider.py": provider.replace('VERSION = "1"', f'VERSION = "{version}"'),
    }


@needs_reference
def test_the_controller_builds_a_provider_from_the_repository(
    tmp_path: Path, server: GitServer, dev: Developer
) -> None:
    config = configure_flake(tmp_path, server.url("infra.git"))
    first = push_flake(dev, greet_files("1", "world"), "the greet provider, version 1")
    done = ok(reconcile(config))
    assert "web: success" in done.stdout
    assert f"Source-Commit: {first}" in dev.state_log()
    record = served_record(dev, "hello")
    assert record["outputs"] == {"greeting": "hello WORLD", "version": "1"}
    (old,) = record["storePaths"]
    assert re.fullmatch(f"{STORE_PATH}greet-provider", old), old

    second = push_flake(dev, greet_files("2", "there"), "the greet provider, version 2, and a new name")
    done = ok(reconcile(config))
    assert "web: success" in done.stdout
    assert f"Source-Commit: {second}" in dev.state_log()
    record = served_record(dev, "hello")
    assert record["outputs"] == {"greeting": "hello THERE", "version": "2"}, "the new build served the update"
    (new,) = record["storePaths"]
    assert new != old and re.fullmatch(f"{STORE_PATH}greet-provider", new), new
    assert 'VERSION = "2"' in (Path(new) / "lib" / "provider.py").read_text()
    assert f"greet 2 ({new}/lib/provider.py): updateResourceRequest" in done.stderr, "its log is forwarded"
    kept = roots(tmp_path / "data" / "gcroots" / "web")
    assert new in kept and old not in kept, kept

    # the plan showed the provider's new command, and the state branch records it
    status = json.loads(ok(cli(tmp_path, "status", "--config", str(config), "--json")).stdout)[0]
    commands = {
        "before": {"executable": f"{old}/bin/provider", "args": []},
        "after": {"executable": f"{new}/bin/provider", "args": []},
    }
    assert status["lastPlan"]["providers"] == [{"name": "greet", **commands}]
    meta = json.loads(git(dev.bare, "show", "nixgitops/state:web/deployment.json"))
    assert meta["providers"] == {"greet": commands["after"]}


@needs_reference
def test_a_commit_whose_build_fails_keeps_state_and_the_next_good_commit_applies(
    tmp_path: Path, server: GitServer, dev: Developer
) -> None:
    config = configure_flake(tmp_path, server.url("infra.git"))
    push_flake(dev, {"flake.nix": flake("tool", SCRIPT=good_tool("one"))}, "a tool")
    ok(reconcile(config))
    before = served_record(dev, "tool")
    assert before["outputs"] == {"stdout": "tool one\n"}

    broken = push_flake(dev, {"flake.nix": flake("tool", SCRIPT=BROKEN_TOOL)}, "a tool that does not build")
    done = reconcile(config)
    assert done.returncode != 0 and "web: failed" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    said = done.stdout + done.stderr
    assert re.search(rf"Building {STORE_PATH}tool\.drv for resource 'tool' failed", said), said
    assert "the tool does not build, on purpose" in said, "the builder's log is shown"
    assert served_record(dev, "tool") == before, "the record of the last good build stays"
    assert f"Source-Commit: {broken}" in dev.state_log(), "the failed attempt is recorded"

    good = push_flake(dev, {"flake.nix": flake("tool", SCRIPT=good_tool("three"))}, "a tool that builds again")
    assert "web: success" in ok(reconcile(config)).stdout
    after = served_record(dev, "tool")
    assert after["outputs"] == {"stdout": "tool three\n"} and after["sourceCommit"] == good
    assert after["storePaths"] == [after["inputs"]["executable"]] != before["storePaths"]
