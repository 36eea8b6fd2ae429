"""Builds: realise the store paths a deployment refers to, and keep them alive.

A resource's inputs and a provider's executable refer to store paths through Nix string context
(``DesiredResource.needs``, ``ProviderSpec.needs``): ``<drv>!<output>`` for a derivation's output, a ``.drv`` for
all of its outputs, or a source path. Before the provider starts or the request goes out, ``Builder.realise``
runs ``nix-store --realise`` on them: each set of paths once per run (callers that need paths being built wait
for that build), within a time limit, with Nix's log forwarded line by line. Every realised path gets an indirect
garbage-collector root at once, in the deployment's roots directory; once the run's state is committed,
``GcRoots.keep`` keeps exactly the roots of what the state refers to.
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


_OUTPUT = re.compile(rb'\("([^"]*)","(/[^"]*)"')


def output_paths(need: str) -> tuple[str, ...] | None:
    """The store paths ``need`` stands for, read from its ``.drv`` (Nix's ATerm: ``Derive([("out","/nix/store/..",
    ..), ..], ..)``); a source path is itself; None when the ``.drv`` is not in the store."""
    drv, _, output = need.partition("!")
    if not drv.endswith(".drv"):
        return (need,)
    try:
        with open(drv, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if not head.startswith(b"Derive(["):
        return None
    outputs = {}
    for match in _OUTPUT.finditer(head[: head.find(b")],") + 1]):
        outputs[match.group(1).decode()] = match.group(2).decode()
    if output:
        return (outputs[output],) if output in outputs else None
    return tuple(outputs.values()) or None


def missing_derivations(needs: Iterable[str]) -> set[str]:
    """The derivations among ``needs`` whose ``.drv`` file is not in the store yet: a read-only evaluation
    computed their paths without writing them, so a writable evaluation must run before they can be built."""
    return {d for n in needs if (d := derivation_of(n)) is not None and not os.path.exists(d)}


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
        """The store paths ``needs`` stand for, built or substituted if they are not valid yet; ``what`` names
        who needs them in errors and logs (``resource 'web'``). Raises ``BuildError``."""
        key = frozenset(needs)
        if not key:
            return ()
        failed = sorted({d for n in key if (d := derivation_of(n)) in self._failed})
        if failed:  # the prefetch built it and failed: not again
            raise BuildError(self._failure(failed, what, self._failed[failed[0]]))
        known = [output_paths(n) for n in sorted(key)]
        if all(p is not None and all(os.path.exists(q) for q in p) for p in known):  # valid already: no Nix call
            paths = tuple(dict.fromkeys(q for p in known if p is not None for q in p))
            with self._lock:
                self.realised.update(paths)
            return paths
        with self._lock:
            future = self._builds.get(key)
            mine = future is None
            if future is None:
                future = self._builds[key] = Future()
                self._counter += 1
                link = self.roots.directory / f"{self._token}-{self._counter}"
        if not mine:
            return future.result()
        try:
            paths = self._realise(sorted(key), link, what)
        except BuildError as exc:
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

    def prefetch(self, needs: Iterable[str]) -> None:
        """Build ``needs`` at once, in one Nix command that keeps going past failures (Nix runs the builds in
        parallel, as ``max-jobs`` allows): each resource's ``realise`` then finds its paths valid. A failure is not
        reported here: the resource that needs the path builds it again, and fails with Nix's message."""
        wanted = sorted({n for n in needs if not _valid(n)})
        if not wanted:
            return
        with self._lock:
            self._counter += 1
            link = self.roots.directory / f"{self._token}-{self._counter}"
        link.parent.mkdir(parents=True, exist_ok=True)
        limit = ["--option", "timeout", str(max(1, round(self.settings.build_timeout)))]
        argv = [NIX_STORE, *common_options(self.settings), *limit, "--realise", "--keep-going", *wanted]
        log = self.log
        try:
            done = run_logged(
                [*argv, "--add-root", str(link)],
                timeout=self.settings.build_timeout + 30,
                on_line=None if log is None else (lambda line: log(f"[build] {line}")),
            )
        except CommandFailed:
            return  # each resource builds what it needs, and reports what fails
        if done.returncode != 0:
            tail = _tail(done.stderr)
            for drv in failed_derivations(done.stderr):
                self._failed[drv] = tail

    def _failure(self, failed: list[str], what: str, tail: str) -> str:
        timeout = f"\n(build_timeout is {self.settings.build_timeout:g} s)" if "timed out after" in tail else ""
        return (
            f"Building {', '.join(failed)} for {what} failed (`nix-store --read-log DRV` shows its whole log):\n"
            + tail
            + timeout
        )

    def _realise(self, needs: list[str], link: Path, what: str) -> tuple[str, ...]:
        link.parent.mkdir(parents=True, exist_ok=True)
        limit = ["--option", "timeout", str(max(1, round(self.settings.build_timeout)))]  # Nix stops the builder
        argv = [NIX_STORE, *common_options(self.settings), *limit, "--realise", *needs, "--add-root", str(link)]
        log = self.log
        on_line = None if log is None else (lambda line: log(f"[build] {line}"))
        try:
            done = run_logged(argv, timeout=self.settings.build_timeout + 30, on_line=on_line)
        except CommandFailed as exc:
            if exc.returncode is None:
                raise BuildError(
                    f"Building what {what} needs did not finish within {self.settings.build_timeout:g} s"
                    f" (build_timeout) and was stopped: {', '.join(needs)}."
                ) from None
            raise BuildError(f"Cannot run {NIX_STORE} to build what {what} needs: {exc}") from None
        if done.returncode != 0:
            failed = sorted(failed_derivations(done.stderr)) or [n.split("!", 1)[0] for n in needs]
            raise BuildError(self._failure(failed, what, _tail(done.stderr)))
        paths = []
        for line in done.stdout.splitlines():
            line = line.strip()
            if line:
                paths.append(os.readlink(line) if os.path.islink(line) else line)
        return tuple(dict.fromkeys(paths))


def _valid(need: str) -> bool:
    paths = output_paths(need)
    return paths is not None and all(os.path.exists(p) for p in paths)


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
