"""Deployments that try to escape or to exhaust: evaluation is restricted to the repository, fetches and builds
nothing, and has a time and a memory limit. Each ends in a clear error, with the real Nix."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Checkout, assert_clean_error

SECRET = "outside-the-repository-7f3a"


def deployment(value: str) -> str:
    return f"""{{ members, providers, ... }}: {{
  members.m = {{ type = providers.local.memo; inputs.initialize_with = {value}; }};
}}
"""


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "secret.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def test_reading_a_file_outside_the_repository_is_refused(checkout: Checkout, outside: Path) -> None:
    checkout.deploy(deployment(f"builtins.readFile {outside}"))
    done = checkout.run("plan")
    assert_clean_error(done, "forbidden in restricted mode", "--allow-path")
    assert SECRET not in done.stdout + done.stderr
    allowed = checkout.run("plan", "--allow-path", str(outside.parent))
    assert allowed.returncode == 0 and SECRET in allowed.stdout, allowed.stderr


def test_files_of_the_repository_can_be_read(checkout: Checkout) -> None:
    (checkout.path / "lib").mkdir()
    (checkout.path / "lib" / "value.txt").write_text("inside")
    checkout.write(deployment("builtins.readFile ./lib/value.txt"), "deployment.nix")
    checkout.commit()
    done = checkout.ok("plan")
    assert "inside" in done.stdout


def test_fetching_is_refused(checkout: Checkout) -> None:
    checkout.deploy(deployment('builtins.readFile (builtins.fetchurl "http://127.0.0.1:9/payload")'))
    assert_clean_error(checkout.run("plan"), "forbidden in restricted mode")


def test_import_from_derivation_is_refused(checkout: Checkout) -> None:
    ifd = 'import (derivation { name = "x"; builder = "/bin/sh"; system = builtins.currentSystem; })'
    checkout.deploy(deployment(ifd))
    done = checkout.run("plan")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "import" in done.stderr.lower() or "build" in done.stderr.lower(), done.stderr


def test_infinite_recursion_is_a_clear_error(checkout: Checkout) -> None:
    checkout.deploy(deployment("let x = x + 1; in x"))
    assert_clean_error(checkout.run("plan"), "infinite recursion")


def test_an_evaluation_that_never_ends_is_stopped(checkout: Checkout) -> None:
    # about 2^60 calls, in constant memory: it would run for years
    checkout.deploy(deployment("let f = n: if n == 0 then 1 else f (n - 1) + f (n - 1); in f 60"))
    done = checkout.run("plan", "--eval-timeout", "2", timeout=60)
    assert_clean_error(done, "did not finish within 2 s", "evaluation_timeout")


def test_an_evaluation_that_grows_without_end_is_stopped(checkout: Checkout) -> None:
    checkout.deploy(deployment("builtins.length (builtins.genList (x: x) 200000000)"))
    done = checkout.run("plan", "--eval-memory", "256", timeout=60)
    assert_clean_error(done, "ran out of memory", "256 MiB")


def test_unrestricted_evaluation_is_a_choice(checkout: Checkout, outside: Path) -> None:
    checkout.deploy(deployment(f"builtins.readFile {outside}"))
    done = checkout.run("plan", "--no-restrict-eval")
    assert done.returncode == 0 and SECRET in done.stdout, done.stderr
