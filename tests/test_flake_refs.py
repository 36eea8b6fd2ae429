"""Flake references as the command line and the configuration give them, and the NAR hash that pins the harness's
directory in a pure evaluation, checked against Nix's own `nix hash path` on generated trees."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import Checkout, assert_clean_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.flakes import DEFAULT_ATTRIBUTE, locate, nar_hash

BASE = Path("/srv/repo")


@pytest.mark.parametrize(
    ("text", "ref", "attribute", "directory"),
    [
        ("", "/srv/repo", (DEFAULT_ATTRIBUTE,), "/srv/repo"),
        (".#deployments.prod", "/srv/repo", ("deployments", "prod"), "/srv/repo"),
        ("./infra#staging", "/srv/repo/infra", ("staging",), "/srv/repo/infra"),
        (".?dir=infra", "/srv/repo?dir=infra", (DEFAULT_ATTRIBUTE,), "/srv/repo/infra"),
        ("path:./infra", "path:/srv/repo/infra", (DEFAULT_ATTRIBUTE,), "/srv/repo/infra"),
        ("git+file:///elsewhere?dir=x#a", "git+file:///elsewhere?dir=x", ("a",), "/elsewhere/x"),
        ("/abs/flake", "/abs/flake", (DEFAULT_ATTRIBUTE,), "/abs/flake"),
        ("github:org/infra#web", "github:org/infra", ("web",), None),
    ],
)
def test_references_are_made_absolute_against_the_directory(
    text: str, ref: str, attribute: tuple[str, ...], directory: str | None
) -> None:
    flake = locate(text, BASE)
    assert (flake.ref, flake.attribute) == (ref, attribute)
    assert flake.directory == (Path(directory) if directory else None)


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=8).filter(
    lambda n: n not in (".", "..")
)
files = st.tuples(st.binary(max_size=300), st.booleans())  # contents, executable
trees = st.recursive(
    files | st.builds(lambda t: ("link", t), names),
    lambda children: st.dictionaries(names, children, max_size=4),
    max_leaves=8,
)


def _write(path: Path, node: object) -> None:
    if isinstance(node, dict):
        path.mkdir()
        for name, child in node.items():
            _write(path / name, child)
    elif isinstance(node, tuple) and node[0] == "link":
        os.symlink(str(node[1]), path)
    else:
        assert isinstance(node, tuple)
        data, executable = node
        path.write_bytes(data)
        path.chmod(0o755 if executable else 0o644)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(names, trees, min_size=1, max_size=4))
def test_nar_hash_is_what_nix_computes(tree: dict[str, object]) -> None:
    if shutil.which("nix") is None:
        pytest.skip("nix is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        _write(root, tree)
        nix = subprocess.run(
            ["nix", "--extra-experimental-features", "nix-command", "hash", "path", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert nar_hash(root) == nix.stdout.strip()


def test_options_that_a_flake_ignores_are_refused(checkout: Checkout) -> None:
    checkout.deploy("{ members, providers, ... }: { }")
    assert_clean_error(checkout.run("plan", "--flake", "-I", "nixpkgs=/srv/nixpkgs"), "no effect with --flake")
    assert_clean_error(checkout.run("plan", "--flake", "--file", "other.nix"), "either --flake or --file")
    assert_clean_error(checkout.run("plan", "--flake"), "has no flake.nix")
