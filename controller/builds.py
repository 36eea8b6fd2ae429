"""Builds: realise the store paths a deployment refers to, and keep them alive.

A resource's inputs and a provider's executable refer to store paths through Nix string context
(``DesiredResource.needs``, ``ProviderSpec.needs``): ``<drv>!<output>`` for a derivation's output, a ``.drv`` for
all of its outputs, or a source path. Before the provider starts or the request goes out, ``Builder.realise``
runs ``nix-store --realise`` on them: each set of paths once per run (callers that need paths being built wait
for that build), each build within a time limit, with Nix's log forwarded line by line. Every realised path gets
an indirect garbage-collector root at once, in the deployment's roots directory; once the run's state is
committed, ``GcRoots.keep`` keeps exactly the roots of what the state refers to.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path

from controller.errors import NixgitopsError
from controller.model import NixSettings
from controller.nixcli import common_options
from controller.processes import CommandFailed, run, run_logged

Log = Callable[[str], None]
NIX_STORE = "nix-store"
_FAILED_DRV = re.compile(  # how Nix 2.8 names a derivation that failed: its builder, its time limit, its inputs
    r"builder for '([^']+\.drv)' failed"
    r"|building of '([^'!]+\.drv)[^']*' .*timed out"
    r"|cannot build derivation '([^']+\.drv)'"
)


def failed_derivations(text: str) -> set[str]:
    """The derivations Nix's output says failed."""
    return {next(g for g in m.groups() if g) for m in _FAILED_DRV.finditer(text)}


class BuildError(NixgitopsError):
    """A store path could not be realised: Nix's message, the derivation named."""


def derivation_of(need: str) -> str | None:
    """The ``.drv`` a need is built from (None for a source path)."""
    path = need.split("!", 1)[0]
    return path if path.endswith(".drv") else None


def missing(needs: Iterable[str]) -> set[str]:
    """The ``.drv`` files and sources among ``needs`` that are not in the store yet: a read-only evaluation
    computed their paths without writing them, so a writable evaluation must run before they can be built."""
    return {path for n in needs if not os.path.exists(path := n.split("!", 1)[0])}


class _Failed(Exception):
    """A realisation failed; each caller that waited for it says so in its own words (``text``)."""

    def __init__(self, failed: list[str], tail: str, why: str = "failed") -> None:
        super().__init__(why)
        self.failed, self.tail, self.why = failed, tail, why


class Builder:
    """Realises store paths for one run, each set once; roots what it realised in ``roots`` (a ``GcRoots``)."""

    def __init__(self, settings: NixSettings, roots: GcRoots, *, log: Log | None = None) -> None:
        self.settings = settings
        self.roots = roots
        self.log = log
        self._lock = threading.Lock()
        self._builds: dict[frozenset[str], Future[tuple[str, ...]]] = {}
        self._token = secrets.token_hex(4)  # the run's roots, next to those of other runs and of the state
        self._counter = 0
        self._failed: dict[str, str] = {}  # derivation -> the end of the log of the prefetch in which it failed
        self.realised: set[str] = set()
        """Every store path realised in this run."""

    def realise(self, needs: Iterable[str], *, what: str) -> tuple[str, ...]:
        """The store paths ``needs`` stand for, built or substituted if they are not valid yet, and rooted; ``what``
        names who needs them in errors (``resource 'web'``). Raises ``BuildError``."""
        key = frozenset(needs)
        if not key:
            return ()
        try:
            return self._once(key)
        except _Failed as exc:
            raise BuildError(self._failure(exc, what)) from None

    def _once(self, key: frozenset[str]) -> tuple[str, ...]:
        failed = sorted({n.split("!", 1)[0] for n in key} & self._failed.keys())
        if failed:  # the prefetch built it and it failed: not again
            raise _Failed(failed, self._failed[failed[0]])
        with self._lock:
            future = self._builds.get(key)
            mine = future is None
            if future is None:
                future = self._builds[key] = Future()
                link = self._link()
        if not mine:
            return future.result()
        try:
            paths = self._realise(sorted(key), link)
        except _Failed as exc:
            future.set_exception(exc)
            raise
        except BaseException as exc:  # interrupted: another caller may build it again
            with self._lock:
                self._builds.pop(key, None)
            future.set_exception(exc)
            raise
        with self._lock:
            self.realised.update(paths)
        future.set_result(paths)
        return paths

    def _link(self) -> Path:
        """A new name for the roots of one Nix command (Nix names the others ``<link>-2``, ...)."""
        self._counter += 1
        return self.roots.directory / f"{self._token}-{self._counter}"

    def _command(self, needs: list[str], link: Path, *, keep_going: bool = False) -> list[str]:
        limit = ["--option", "timeout", str(max(1, round(self.settings.build_timeout)))]  # Nix stops a builder
        going = ["--keep-going"] if keep_going else []
        return [NIX_STORE, *common_options(self.settings), *limit, "--realise", *going, *needs, "--add-root", str(link)]

    def _deadline(self, needs: list[str]) -> float:
        """How long one Nix command may take in all: Nix stops each build at build_timeout; this only stops a
        command that hangs outside any build."""
        return self.settings.build_timeout * max(1, sum(1 for n in needs if ".drv" in n)) + 60

    def prefetch(self, needs: Iterable[str]) -> None:
        """Build ``needs`` at once, in one Nix command that keeps going past failures (Nix runs the builds in
        parallel, as ``max-jobs`` allows); each resource's ``realise`` then finds them valid (a quick Nix call that
        also roots them). A derivation that failed here fails its resources without being built again."""
        wanted = sorted(set(needs))
        if not wanted:
            return
        self.roots.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            link = self._link()
        log = self.log
        try:
            done = run_logged(
                self._command(wanted, link, keep_going=True),
                timeout=self._deadline(wanted),
                on_line=None if log is None else (lambda line: log(f"[build] {line}")),
            )
        except CommandFailed:
            return  # each resource builds what it needs, and reports what fails
        if done.returncode != 0:
            tail = _tail(done.stderr)
            for drv in failed_derivations(done.stderr):
                self._failed[drv] = tail

    def _failure(self, failed: _Failed, what: str) -> str:
        notes = ""
        if "timed out after" in failed.tail:
            notes += f"\n(build_timeout is {self.settings.build_timeout:g} s)"
        if "Permission denied" in failed.tail or "read-only file system" in failed.tail.lower():
            notes += '\nBuilding needs a Nix store this user can write to (docs/install.md, "The Nix store").'
        if failed.why != "failed":
            return f"Building what {what} needs {failed.why}" + notes
        return (
            f"Building {', '.join(failed.failed)} for {what} failed (`nix-store --read-log DRV` shows its whole"
            " log):\n" + failed.tail + notes
        )

    def _realise(self, needs: list[str], link: Path) -> tuple[str, ...]:
        link.parent.mkdir(parents=True, exist_ok=True)
        log = self.log
        on_line = None if log is None else (lambda line: log(f"[build] {line}"))
        deadline = self._deadline(needs)
        try:
            done = run_logged(self._command(needs, link), timeout=deadline, on_line=on_line)
        except CommandFailed as exc:
            if "could not start" in str(exc):
                why = f"cannot run: {NIX_STORE} could not start. Install Nix (on Debian: apt-get install nix-bin)."
                raise _Failed([], "", why) from None
            why = f"did not finish within {deadline:g} s and was stopped: {', '.join(needs)}."
            raise _Failed([], exc.stderr, why) from None
        if done.returncode != 0:
            failed = sorted(failed_derivations(done.stderr)) or [n.split("!", 1)[0] for n in needs]
            raise _Failed(failed, _tail(done.stderr))
        paths = []
        for line in done.stdout.splitlines():
            line = line.strip()
            if line:
                paths.append(os.readlink(line) if os.path.islink(line) else line)
        return tuple(dict.fromkeys(paths))


def _tail(text: str) -> str:
    return "\n".join([line for line in text.splitlines() if line.strip()][-30:])


class GcRoots:
    """The garbage-collector roots of one deployment: indirect roots (symlinks that Nix registers) in one
    directory. A run adds the roots of what it realises as it goes; after its state is committed, ``keep`` drops
    every root the state does not refer to."""

    def __init__(self, directory: Path, settings: NixSettings, *, log: Log | None = None) -> None:
        self.directory = directory
        self.settings = settings
        self.log = log

    def keep(self, paths: Iterable[str]) -> None:
        """Root exactly ``paths`` (those that exist): drop every other root, and root what has none yet (the state
        of an older version, or of another machine)."""
        wanted = {p for p in paths if p}
        have: set[str] = set()
        if self.directory.is_dir():
            for link in self.directory.iterdir():
                target = os.readlink(link) if link.is_symlink() else None
                if target in wanted and target not in have:
                    have.add(target)
                else:
                    link.unlink(missing_ok=True)
        new = sorted(p for p in wanted - have if os.path.exists(p))
        if not new:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        link = self.directory / f"kept-{secrets.token_hex(4)}"  # Nix names the others <link>-2, <link>-3, ...
        argv = [NIX_STORE, *common_options(self.settings), "--realise", *new, "--add-root", str(link)]
        try:
            done = run(argv, check=False, timeout=300)
            problem = done.stderr.strip()[-300:] if done.returncode != 0 else ""
        except CommandFailed as exc:
            problem = str(exc)
        if problem and self.log is not None:
            self.log(f"could not register garbage-collector roots for {len(new)} store path(s): {problem}")
