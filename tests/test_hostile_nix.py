"""Deployments that try to escape or to exhaust: evaluation is restricted to the repository, fetches and builds
nothing, and has a time and a memory limit. Each ends in a clear error, with the real Nix."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Checkout, assert_clean_error

from controller.errors import EvaluationError
from controller.evaluation import NixEvaluator
from controller.model import EvalLimits, KnownOutputs

SECRET = "outside-the-repository-7f3a"
LINES = {  # what a deployment that traces without end prints: many short lines, or fewer of 10 kB
    "short": '"tick"',
    "long": 'builtins.concatStringsSep "" (builtins.genList (x: "0123456789") 1000)',
}


def trace_forever(line: str) -> str:
    """About 2^60 calls, each tracing ``line``: it would print for years, as fast as Nix can write."""
    return f"let line = {line}; f = n: builtins.trace line (if n == 0 then 1 else f (n - 1) + f (n - 1)); in f 60"


def deployment(value: str) -> str:
    return f"""{{ members, providers, ... }}: {{
  members.m = {{ type = providers.local.memo; inputs.initialize_with = {value}; }};
}}
"""


@pytest.fixture
def loaded() -> Iterator[None]:
    """Two busy loops beside the test, for its whole length: the limits must hold on a loaded machine."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for proc in busy:
            proc.kill()
            proc.wait(timeout=30)


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


@pytest.mark.timeout(90)
@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("persistent", [True, False], ids=["repl", "nix-instantiate"])
def test_a_deployment_that_traces_without_end_is_stopped_in_time_and_in_memory(
    tmp_path: Path, loaded: None, persistent: bool, line: str
) -> None:
    """Whatever it prints, an evaluation is stopped at its time limit, and what is kept of its output is bounded."""
    path = tmp_path / "deployment.nix"
    path.write_text(deployment(trace_forever(LINES[line])))
    logged: list[str] = []
    evaluator = NixEvaluator(path, limits=EvalLimits(timeout=2), log=logged.append)
    tracemalloc.start()
    try:
        started = time.monotonic()
        session = evaluator.session() if persistent else contextlib.nullcontext()
        with session, pytest.raises(EvaluationError, match="did not finish within 2 s"):
            evaluator.evaluate(KnownOutputs(), select={"m"})
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not logged  # the repl served the pass: no fall-back to nix-instantiate
    assert elapsed < 2 * 4 + 10, f"a limit of 2 s stopped the evaluation after {elapsed:.1f} s"
    assert peak < 32 * 1024**2, f"the evaluation held {peak / 1024**2:.0f} MiB of Python objects at its peak"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("persistent", [True, False], ids=["repl", "nix-instantiate"])
def test_a_deployment_that_forges_markers_without_end_is_stopped_in_memory(
    tmp_path: Path, loaded: None, persistent: bool
) -> None:
    """The harness's markers are all kept, so a deployment printing lines that look like them, without end, is
    stopped when they reach a bound, long before its time limit."""
    path = tmp_path / "deployment.nix"
    path.write_text(deployment(trace_forever(f'"nixgitops:eval " + {LINES["long"]}')))
    evaluator = NixEvaluator(path, limits=EvalLimits(timeout=60))
    tracemalloc.start()
    try:
        session = evaluator.session() if persistent else contextlib.nullcontext()
        with session, pytest.raises(EvaluationError, match="more than 64 MiB") as raised:
            evaluator.evaluate(KnownOutputs(), select={"m"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(str(raised.value)) < 4096
    assert peak < 128 * 1024**2, f"the evaluation held {peak / 1024**2:.0f} MiB of Python objects at its peak"
