"""The documentation is checked: the tutorial runs, every complete deployment example evaluates, every
configuration example parses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

from controller.evaluation import NixEvaluator

DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
BLOCK = re.compile(r"(<!-- runnable -->\n)?```(\w+)\n(.*?)```", re.DOTALL)


def blocks(language: str) -> list[tuple[Path, bool, str]]:
    found = []
    for doc in DOCS:
        for match in BLOCK.finditer(doc.read_text()):
            if match.group(2) == language:
                found.append((doc, bool(match.group(1)), match.group(3)))
    return found


def test_the_tutorial_runs(tmp_path: Path) -> None:
    steps = [text for doc, runnable, text in blocks("sh") if runnable and doc.name == "tutorial.md"]
    assert len(steps) >= 4
    script = "set -euo pipefail\n" + "\n".join(steps)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hello again" in done.stdout
    assert "infra: success" in done.stdout
    assert '"contents": "(sensitive)"' in done.stdout and "+ contents = (sensitive)" in done.stdout
    assert done.stdout.count("s3cret-from-outside-git") == 1, "only --show-sensitive shows the secret"


NIX_EXAMPLES = [(doc, text) for doc, _, text in blocks("nix") if text.lstrip().startswith("{ members")]


@pytest.mark.parametrize(("doc", "text"), NIX_EXAMPLES, ids=lambda v: v.name if isinstance(v, Path) else "")
def test_deployment_examples_evaluate(tmp_path: Path, doc: Path, text: str) -> None:
    entry = tmp_path / "deployment.nix"
    entry.write_text(text)
    NixEvaluator(entry).evaluate({})  # raises, naming the problem, if the example is wrong


@pytest.mark.parametrize(
    ("doc", "text"), [(d, t) for d, _, t in blocks("toml")], ids=lambda v: v.name if isinstance(v, Path) else ""
)
def test_configuration_examples_parse(doc: Path, text: str) -> None:
    data = tomllib.loads(text)
    assert data, f"an empty TOML example in {doc.name}"
