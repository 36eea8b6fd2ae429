"""Flakes: a deployment that is an output of a flake, evaluated purely with the inputs its ``flake.lock`` pins.

``locate`` turns what the user wrote (``--flake .#nixgitops``, ``flake = "nixgitops"``) into a ``Flake``;
``lock`` asks Nix for the flake's locked reference, without ever writing or updating ``flake.lock`` (a lock file
that is missing or out of date is the user's to fix, with ``nix flake lock``). An evaluation pass then runs
``nix-instantiate --eval`` in pure mode on ``bootstrap``: an expression that loads the harness and its arguments
from the store (``builtins.fetchTree`` of a directory, pinned by its NAR hash: pure evaluation reads nothing
else) and hands it ``builtins.getFlake`` of the locked reference.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from controller.errors import DeploymentError, EvaluationError
from controller.model import NixSettings
from controller.nixcli import FLAKES, common_options
from controller.processes import CommandFailed, run

DEFAULT_ATTRIBUTE = "nixgitops"


@dataclass(frozen=True)
class Flake:
    """A flake (``ref``: a directory, or any flake reference Nix takes) and the attribute path of its output that
    holds the deployment."""

    ref: str
    attribute: tuple[str, ...] = (DEFAULT_ATTRIBUTE,)

    def __str__(self) -> str:
        return f"{self.ref}#{'.'.join(self.attribute)}"

    @property
    def directory(self) -> Path | None:
        """The local directory of the flake (with ``?dir=``), when it is one."""
        split = _local(self.ref)
        if split is None:
            return None
        path, query = split
        sub = urllib.parse.parse_qs(query).get("dir", [""])[0]
        return Path(path) / sub if sub else Path(path)

    @property
    def subdirectory(self) -> str:
        """``dir=`` of the reference: where in its source the flake is."""
        return urllib.parse.parse_qs(self.ref.partition("?")[2]).get("dir", [""])[0]


_SCHEMES = ("path:", "git+file://", "git+file:")


def _local(ref: str) -> tuple[str, str] | None:
    """The path and query of a local flake reference (a path, ``path:``, ``git+file:``), or None."""
    rest = ref
    for scheme in _SCHEMES:
        if ref.startswith(scheme):
            rest = ref[len(scheme) :]
            break
    else:
        if ":" in ref.split("/", 1)[0]:
            return None  # github:, https://, a registry name with a scheme...
    path, _, query = rest.partition("?")
    return path, query


def locate(text: str, base: Path) -> Flake:
    """``REF#ATTR`` as a ``Flake``; REF defaults to ``.`` and is taken relative to ``base`` when it is a local path
    (``.``, ``./infra``, ``path:./infra``, ``.?dir=infra``), ATTR to ``nixgitops``."""
    ref, _, attribute = text.partition("#")
    ref = ref or "."
    split = _local(ref)
    if split is not None:
        path, query = split
        scheme = next((s for s in _SCHEMES if ref.startswith(s)), "")
        absolute = str((base / path).resolve()) if path else str(base.resolve())
        ref = (scheme.replace("git+file:", "git+file://") if scheme == "git+file:" else scheme) + absolute
        ref += f"?{query}" if query else ""
    names = tuple(a for a in attribute.split(".") if a) if attribute else (DEFAULT_ATTRIBUTE,)
    return Flake(ref, names or (DEFAULT_ATTRIBUTE,))


def lock(flake: Flake, settings: NixSettings, *, timeout: float) -> str:
    """The locked reference of ``flake``, its inputs as its ``flake.lock`` pins them. Raises ``DeploymentError``
    when the lock file is missing or out of date, ``EvaluationError`` when Nix cannot read the flake."""
    where = flake.directory or flake.ref
    if flake.directory is not None and not (flake.directory / "flake.nix").is_file():
        raise DeploymentError(
            f"{flake.directory} has no flake.nix: --flake (or `flake` in the controller's configuration) needs"
            " the directory of a flake. Without one, leave it out and nixgitops evaluates deployment.nix."
        )
    argv = [
        "nix",
        *FLAKES,
        *common_options(settings),
        "flake",
        "metadata",
        "--json",
        "--no-update-lock-file",  # a lock file that is missing or out of date: an error, nothing written
        "--no-registries",
        flake.ref,
    ]
    try:
        done = run(argv, check=False, timeout=timeout)
    except CommandFailed as exc:
        raise EvaluationError(f"Cannot read the flake {where}: {exc}") from None
    if done.returncode != 0:
        text = done.stderr.strip()
        if "requires lock file changes" in text:
            raise DeploymentError(
                f"The flake {where} has no flake.lock, or its flake.lock does not match the inputs of flake.nix."
                " nixgitops evaluates a flake only with the inputs its flake.lock pins, and never writes or updates"
                f" flake.lock itself: run `nix flake lock` in {where}, and commit flake.lock."
            )
        raise EvaluationError(
            f"Nix cannot read the flake {where}:\n{_tail(text)}\n(If you changed the inputs of flake.nix, run `nix"
            " flake lock` and commit flake.lock: nixgitops never updates it.)"
        )
    metadata = json.loads(done.stdout)
    url = str(metadata.get("url") or "")
    if "rev=" in url or "narHash=" in url:
        return url
    # a working tree with changes (no commit to pin): its copy in the store, pinned by its content
    nar = (metadata.get("locked") or {}).get("narHash")
    if not nar or not metadata.get("path"):
        raise EvaluationError(f"Nix gave no locked reference for the flake {where}: {done.stdout[:300]}")
    sub = (metadata.get("locked") or {}).get("dir") or flake.subdirectory
    where_in = f"&dir={urllib.parse.quote(sub)}" if sub else ""
    return f"path:{metadata['path']}?narHash={urllib.parse.quote(nar)}{where_in}"


def bootstrap(directory: Path, locked: str, attribute: tuple[str, ...]) -> str:
    """The expression a pure evaluation runs: the harness and ``args.json`` from ``directory`` (through the
    store), applied to the flake's output at ``attribute``."""
    tree = (
        f'builtins.fetchTree {{ type = "path"; path = {_nix_string(str(directory))};'
        f" narHash = {_nix_string(nar_hash(directory))}; }}"
    )
    attr = " ".join(_nix_string(a) for a in attribute)
    return (
        f"let dir = {tree}; flake = builtins.getFlake {_nix_string(locked)}; in"
        f' import (dir + "/harness.nix") {{ argsFile = dir + "/args.json";'
        f" entryValue = builtins.foldl' (v: a: v.${{a}}) flake.outputs [ {attr} ]; }}"
    )


def nar_hash(path: Path) -> str:
    """The SRI SHA-256 hash of ``path`` serialised as a NAR (what ``nix hash path`` prints)."""
    digest = hashlib.sha256()

    def put(*items: bytes) -> None:
        for data in items:
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
            digest.update(b"\0" * (-len(data) % 8))

    def node(p: Path) -> None:
        put(b"(")
        info = os.lstat(p)
        if stat.S_ISLNK(info.st_mode):
            put(b"type", b"symlink", b"target", os.fsencode(os.readlink(p)))
        elif stat.S_ISDIR(info.st_mode):
            put(b"type", b"directory")
            for name in sorted(os.listdir(p), key=os.fsencode):
                put(b"entry", b"(", b"name", os.fsencode(name), b"node")
                node(p / name)
                put(b")")
        else:
            put(b"type", b"regular")
            if info.st_mode & stat.S_IXUSR:
                put(b"executable", b"")
            put(b"contents", p.read_bytes())
        put(b")")

    put(b"nix-archive-1")
    node(path)
    return "sha256-" + base64.b64encode(digest.digest()).decode()


def _nix_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])
