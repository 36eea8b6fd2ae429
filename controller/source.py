"""The source repository: ask the remote for the branch head, fetch into a bare cache, read and materialise commits.

The network goes through the ``git`` command line via GitPython, so every way a user authenticates already works
(ssh keys and agent, ``GIT_SSH_COMMAND``, credential helpers, proxies). Everything else is read in-process with
pygit2. An up-to-date remote costs one ``git ls-remote`` and no fetch.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import git
import pygit2

from controller.errors import NixgitopsError, UserError

GIT_TIMEOUT = 120.0
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


class SourceUnavailable(NixgitopsError):
    """The remote could not be reached or read; transient: retried with backoff."""


class BranchMissing(UserError):
    """The tracked branch does not exist on the remote."""


def redact(text: str) -> str:
    """Remove user names and passwords embedded in URLs from a message."""
    return _CREDENTIALS.sub(r"\1***@", text)


def normalise(url: str) -> str:
    """A local path becomes absolute; URLs are kept as they are."""
    if "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url):
        return url
    return str(Path(url).expanduser().resolve())


def _git(directory: Path | None = None) -> git.cmd.Git:
    command = git.Repo(directory).git if directory is not None else git.cmd.Git()
    command.update_environment(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS=os.environ.get("GIT_ASKPASS", "true"))
    return command


def _message(exc: git.exc.GitCommandError) -> str:
    stderr = exc.stderr.strip() if isinstance(exc.stderr, str) else str(exc.stderr)
    return redact(stderr.replace("stderr: ", "").strip("'\n "))


def remote_ref(url: str, ref: str) -> str | None:
    """The commit a remote ref points at, or None when it does not exist (one round-trip, no fetch)."""
    return remote_refs(url, ref)[ref]


def remote_refs(url: str, *refs: str) -> dict[str, str | None]:
    """The commits several refs of one remote point at (None: absent), in one round-trip."""
    try:
        out = str(_git().ls_remote(normalise(url), *refs, kill_after_timeout=GIT_TIMEOUT))
    except git.exc.GitCommandError as exc:
        raise SourceUnavailable(f"Cannot reach {redact(url)}: {_message(exc)}") from None
    found: dict[str, str | None] = dict.fromkeys(refs)
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name in found:
            found[name] = sha
    return found


class Cache:
    """A bare repository under the data directory holding what was fetched from one remote."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        if not (directory / "HEAD").exists():
            directory.mkdir(parents=True, exist_ok=True)
            git.Repo.init(directory, bare=True)
        self.repo = pygit2.Repository(str(directory))

    def has(self, commit: str) -> bool:
        try:
            return isinstance(self.repo.get(commit), pygit2.Commit)
        except ValueError:
            return False

    def fetch(self, url: str, ref: str, into: str) -> None:
        """Fetch ``ref`` of ``url`` into the local ref ``into`` (forced: the cache mirrors the remote)."""
        try:
            _git(self.directory).fetch(normalise(url), f"+{ref}:{into}", kill_after_timeout=GIT_TIMEOUT)
        except git.exc.GitCommandError as exc:
            raise SourceUnavailable(f"Cannot fetch {ref} from {redact(url)}: {_message(exc)}") from None

    def push(self, url: str, commit: str, ref: str, expected: str | None) -> str | None:
        """Move the remote ``ref`` to ``commit`` only if it still points at ``expected`` (None: absent).

        ``commit`` always descends from ``expected``, so this is a fast-forward guarded by a compare-and-swap
        (``--force-with-lease``), never a rewrite. Returns None on success, else git's reason for refusing.
        """
        lease = f"--force-with-lease={ref}:{expected or ''}"
        try:
            _git(self.directory).push(
                "--porcelain", lease, normalise(url), f"{commit}:{ref}", kill_after_timeout=GIT_TIMEOUT
            )
        except git.exc.GitCommandError as exc:
            text = _message(exc)
            out = exc.stdout if isinstance(exc.stdout, str) else ""
            for reason in (out, text):
                if "stale info" in reason or "rejected" in reason or "fetch first" in reason:
                    return redact(reason.replace("stdout: ", "").strip("'\n "))
            raise SourceUnavailable(f"Cannot push {ref} to {redact(url)}: {text}") from None
        return None

    def descends(self, commit: str, ancestor: str) -> bool:
        return commit == ancestor or bool(self.repo.descendant_of(commit, ancestor))

    def materialise(self, commit: str, directory: Path) -> Path:
        """Write the files of ``commit`` into ``directory`` (replaced if it exists); nothing else is touched."""
        partial = directory.with_name(directory.name + ".partial")
        for stale in (directory, partial):
            if stale.exists():
                shutil.rmtree(stale)
        partial.mkdir(parents=True)
        tree = self.repo.revparse_single(commit).peel(pygit2.Tree)
        self.repo.checkout_tree(  # type: ignore[no-untyped-call]
            tree, directory=str(partial), strategy=pygit2.enums.CheckoutStrategy.FORCE
        )
        partial.rename(directory)  # complete or absent, never half-written
        return directory

    def ref(self, name: str) -> str | None:
        found = self.repo.references.get(name)
        return str(found.target) if found is not None else None
