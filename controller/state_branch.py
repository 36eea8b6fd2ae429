"""State on a Git branch, written with pygit2 straight into the object database (no work tree).

Layout of the state branch (default ``nixgitops/state``)::

    <deployment>/deployment.json              last applied source commit, last run summary
    <deployment>/resources/<xx>/<path>.json   one blob per resource: type, inputs, outputs, dependencies, ...
                                              (<xx>: the first two hex digits of the SHA-1 of <path>)

One commit per run that changed anything; its message names the source commit and the counts, with a
``Source-Commit:`` trailer. The branch ref moves only from the commit we read to the one we write.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pygit2
from pygit2.enums import FileMode

from controller import failpoints
from controller.errors import StateError
from controller.model import ResourceState
from controller.sealing import Sealer
from controller.sensitive import SEALED_KEY, redact

DEFAULT_BRANCH = "nixgitops/state"
DEFAULT_IDENTITY = ("nixgitops", "nixgitops@localhost")


# The states loaded last, by (repository, deployment, resources tree id): records are immutable and a tree id
# names its content, so an entry is never stale. Bounded by the number of records kept.
_LOADED: collections.OrderedDict[tuple[str, str, str], dict[str, ResourceState]] = collections.OrderedDict()
_LOADED_MAX_RECORDS = 50_000
_loaded_lock = threading.Lock()
_SEALED = SEALED_KEY.encode()


def _remember(key: tuple[str, str, str], state: dict[str, ResourceState]) -> None:
    with _loaded_lock:
        _LOADED[key] = state
        _LOADED.move_to_end(key)
        while len(_LOADED) > 1 and sum(len(s) for s in _LOADED.values()) > _LOADED_MAX_RECORDS:
            _LOADED.popitem(last=False)


def record_location(path: str) -> tuple[str, str]:
    """Where the record of resource ``path`` lives under ``resources/``: in one of 256 directories named by the
    first two hex digits of the SHA-1 of the path, as ``<path>.json`` (``%``, ``/`` and NUL written ``%25``, ``%2F``,
    ``%00``). Each tree stays small, so recording one
    change costs the same in a deployment of 10 resources as in one of 10,000."""
    name = path.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")  # a member name may hold any of these
    return hashlib.sha1(path.encode()).hexdigest()[:2], f"{name}.json"


def _records(resources: pygit2.Tree) -> Iterator[tuple[str, pygit2.Object]]:
    """Every record blob under a resources tree, with where it is: in the buckets, and at the top level (the flat
    layout of earlier versions, moved into the buckets by the next commit)."""
    for entry in resources:
        name = entry.name or ""
        if isinstance(entry, pygit2.Tree):
            for inner in entry:
                if (inner.name or "").endswith(".json"):
                    yield f"{name}/{inner.name}", inner
        elif name.endswith(".json"):
            yield name, entry


def dump(data: Any, default: Callable[[object], Any] | None = None) -> bytes:
    """A record or ``deployment.json`` as written on the branch; ``default`` writes sensitive values (sealed)."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=default) + "\n").encode()


def open_repository(directory: Path) -> pygit2.Repository:
    """The Git repository that holds ``directory``; a clear error when there is none."""
    found = pygit2.discover_repository(str(directory))
    if found is None:
        raise StateError(
            f"{directory} is not inside a Git repository, and nixgitops keeps its state on a Git branch."
            " Run `git init` there (and commit your deployment.nix) first."
        )
    return pygit2.Repository(found)


def has_uncommitted_changes(repo: pygit2.Repository) -> bool:
    """True when tracked files in the work tree differ from HEAD."""
    if repo.is_bare:
        return False
    return bool(repo.status(untracked_files="no"))


def source_commit(repo: pygit2.Repository) -> str | None:
    """The commit checked out (HEAD), or None in a repository without commits."""
    if repo.head_is_unborn:
        return None
    return str(repo.head.target)


class StateBranch:
    """Reads and writes one deployment's state on one branch of one repository."""

    def __init__(
        self,
        repo: pygit2.Repository,
        *,
        branch: str = DEFAULT_BRANCH,
        deployment: str = "default",
        identity: tuple[str, str] = DEFAULT_IDENTITY,
        sealer: Sealer | None = None,
    ) -> None:
        """``sealer``: how sensitive values are written and read back (docs/secrets.md); without one, a record
        holding one cannot be written, and sealed values are read as they are stored."""
        self.repo = repo
        self.sealer = sealer
        self.foreign = False  # another deployment's records, read by this one (``others``)
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self.deployment = deployment
        self.identity = identity
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", deployment) or ".." in deployment:
            raise StateError(
                f"{deployment!r} is not a valid deployment name: use letters, digits, '_', '-' and '.', because it"
                " names a directory on the state branch."
            )
        if not pygit2.reference_is_valid_name(self.ref):
            raise StateError(f"{branch!r} is not a valid Git branch name for the state branch.")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this deployment's lock in this repository, so two runs never apply it at once."""
        path = Path(self.repo.path) / "nixgitops" / f"{self.deployment}.lock"
        path.parent.mkdir(exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StateError(
                    f"Another nixgitops run ({holder}) is applying deployment {self.deployment!r} in this"
                    " repository; wait for it to finish, then run again."
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- reading -------------------------------------------------------------------------------------------

    def tip(self) -> pygit2.Commit | None:
        ref = self.repo.references.get(self.ref)
        if ref is None:
            return None
        return ref.peel(pygit2.Commit)

    def _dir(self, name: str, tree: pygit2.Tree | None) -> pygit2.Tree | None:
        if tree is None or name not in tree:
            return None
        obj = self.repo[tree[name].id]
        if not isinstance(obj, pygit2.Tree):
            raise StateError(f"{name} on the state branch {self.branch!r} is a file, not a directory.")
        return obj

    def _trees(self) -> tuple[pygit2.Tree | None, pygit2.Tree | None, pygit2.Tree | None]:
        tip = self.tip()
        root = tip.tree if tip is not None else None
        dep = self._dir(self.deployment, root)
        return root, dep, self._dir("resources", dep)

    def others(self) -> dict[str, ResourceState]:
        """Every resource the other deployments that share this branch recorded (each in its own directory), by
        path: what the members they deploy output, readable by this deployment's members."""
        root = self._trees()[0]
        found: dict[str, ResourceState] = {}
        for entry in root or ():
            if entry.name and entry.name != self.deployment and isinstance(entry, pygit2.Tree):
                other = StateBranch(self.repo, branch=self.branch, deployment=entry.name, sealer=self.sealer)
                other.foreign = True
                found.update(other.load())
        return found

    def load(self) -> dict[str, ResourceState]:
        """Every resource recorded for this deployment, by path.

        Reading 10,000 blobs costs about 0.3 s, so the records of the current resources tree are cached in one file
        under the repository's own directory, named by the tree's id: a cache can never be stale, only absent.
        """
        _, _, resources = self._trees()
        if resources is None:
            return {}
        key = (self.repo.path, self.deployment, str(resources.id))
        with _loaded_lock:
            if key in _LOADED:
                _LOADED.move_to_end(key)
                return dict(_LOADED[key])
        state, sealed = self._load(resources)
        if not sealed:  # (sensitive values are read again each time: they open with the reader's identities)
            _remember(key, state)
        return dict(state)

    def _revive(self, data: Any, raw: bytes) -> Any:
        if self.sealer is None or _SEALED not in raw:
            return data
        return self.sealer.revive(data, own=not self.foreign)

    def _load(self, resources: pygit2.Tree) -> tuple[dict[str, ResourceState], bool]:
        """The records, and whether any holds a sealed value."""
        cached = self._cache_dir() / f"{resources.id}.json"
        try:
            raw = cached.read_bytes()
            records = self._revive(json.loads(raw), raw)
            return {r["path"]: ResourceState.from_json(r) for r in records}, _SEALED in raw
        except (OSError, ValueError, KeyError, TypeError):
            pass
        state: dict[str, ResourceState] = {}
        sealed = False
        for where, entry in _records(resources):
            blob = self.repo[entry.id]
            try:
                raw = blob.data  # type: ignore[attr-defined]
                sealed = sealed or _SEALED in raw
                data = self._revive(json.loads(raw), raw)
                resource = ResourceState.from_json(data)
            except (ValueError, KeyError, TypeError) as exc:
                raise StateError(
                    f"{self.deployment}/resources/{where} on the state branch {self.branch!r} is not a valid"
                    f" resource record ({exc}). Repair or revert that commit of the state branch."
                ) from None
            state[resource.path] = resource
        self._write_cache(cached, [r.to_json() for r in state.values()])
        return state, sealed

    def _cache_dir(self) -> Path:
        return Path(self.repo.path) / "nixgitops" / "state-cache" / self.deployment

    def _write_cache(self, path: Path, records: list[dict[str, Any]]) -> bool:
        """Best effort: a cache that cannot be written is only a slower next load. Whether a record holds a
        sealed value."""
        text = json.dumps(records, separators=(",", ":"), default=self._default)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for old in path.parent.glob("*.json"):
                old.unlink(missing_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError:
            pass
        return SEALED_KEY in text

    @property
    def _default(self) -> Callable[[object], Any] | None:
        return self.sealer.store if self.sealer is not None else None

    def load_meta(self) -> dict[str, Any]:
        _, dep, _ = self._trees()
        if dep is None or "deployment.json" not in dep:
            return {}
        data = json.loads(self.repo[dep["deployment.json"].id].data)  # type: ignore[attr-defined]
        return data if isinstance(data, dict) else {}

    # -- writing -------------------------------------------------------------------------------------------

    def commit(
        self,
        *,
        upserts: Mapping[str, ResourceState],
        deletes: Iterable[str],
        meta: Mapping[str, Any],
        message: str,
        state: Mapping[str, ResourceState] | None = None,
    ) -> str | None:
        """Write one commit with these resource changes and ``meta``; None when nothing changed.

        ``state``, the full resulting state when the caller has it, warms the load cache for the new tree.
        """
        tip = self.tip()
        root, dep, resources = self._trees()
        builder = self.repo.TreeBuilder(resources) if resources is not None else self.repo.TreeBuilder()
        buckets: dict[str, pygit2.TreeBuilder] = {}

        def bucket(name: str) -> pygit2.TreeBuilder:
            if name not in buckets:
                found = builder.get(name)
                buckets[name] = (
                    self.repo.TreeBuilder(found) if isinstance(found, pygit2.Tree) else self.repo.TreeBuilder()
                )
            return buckets[name]

        for entry in list(resources or ()):  # records of the flat layout move into their buckets
            flat = entry.name or ""
            if isinstance(entry, pygit2.Blob) and flat.endswith(".json"):
                builder.remove(flat)
                directory, name = record_location(flat.removesuffix(".json"))
                bucket(directory).insert(name, entry.id, FileMode.BLOB)
        for path, resource in upserts.items():
            directory, name = record_location(path)
            blob = dump(resource.to_json(), self._default)
            bucket(directory).insert(name, self.repo.create_blob(blob), FileMode.BLOB)
        for path in deletes:
            directory, name = record_location(path)
            if bucket(directory).get(name) is not None:
                bucket(directory).remove(name)
        for directory, sub in buckets.items():
            if len(sub):
                builder.insert(directory, sub.write(), FileMode.TREE)
            elif builder.get(directory) is not None:
                builder.remove(directory)
        dep_builder = self.repo.TreeBuilder(dep) if dep is not None else self.repo.TreeBuilder()
        if len(builder):
            resources_id = builder.write()
            dep_builder.insert("resources", resources_id, FileMode.TREE)
            cached = self._cache_dir() / f"{resources_id}.json"
            fresh = resources is None or resources_id != resources.id or not cached.exists()
            if state is not None and fresh and not self._write_cache(cached, [r.to_json() for r in state.values()]):
                _remember((self.repo.path, self.deployment, str(resources_id)), dict(state))
        elif dep_builder.get("resources") is not None:
            dep_builder.remove("resources")
        dep_builder.insert("deployment.json", self.repo.create_blob(dump(dict(meta))), FileMode.BLOB)
        root_builder = self.repo.TreeBuilder(root) if root is not None else self.repo.TreeBuilder()
        root_builder.insert(self.deployment, dep_builder.write(), FileMode.TREE)
        tree = root_builder.write()
        if root is not None and tree == root.id:
            return None
        head = self.repo.references.get("HEAD")
        if head is not None and head.type == pygit2.enums.ReferenceType.SYMBOLIC and head.target == self.ref:
            raise StateError(
                f"The state branch {self.branch!r} is checked out in this repository; check out your source"
                " branch instead, so the state commit does not fight your work tree."
            )
        signature = pygit2.Signature(*self.identity)
        parents = [tip.id] if tip is not None else []
        message = redact(message)  # (every commit message: a provider's error in a run's summary, a recovery note)
        failpoints.hit("state-commit")
        try:
            oid = self.repo.create_commit(self.ref, signature, signature, message, tree, parents)
        except (pygit2.GitError, OSError) as exc:
            raise self._not_recorded(str(exc)) from None
        # libgit2 can report success when the disk is full and the ref was never written (seen with pygit2 1.21
        # on a full tmpfs): the state commit counts only once the branch is read back at it, whole.
        found = self.repo.references.get(self.ref)
        if found is None or found.target != oid or not self._readable(oid):
            raise self._not_recorded("the branch does not point at the new commit after writing it")
        return str(oid)

    def _readable(self, oid: pygit2.Oid) -> bool:
        try:
            commit = self.repo.get(oid)
            return (
                commit is not None
                and commit.type == pygit2.enums.ObjectType.COMMIT
                and commit.peel(pygit2.Tree) is not None
            )
        except (KeyError, ValueError, pygit2.GitError):
            return False

    def _not_recorded(self, detail: str) -> StateError:
        free = shutil.disk_usage(self.repo.path).free
        why = (
            f"The disk holding {self.repo.path} is full ({free} bytes free): free space and run again."
            if free < 1024 * 1024 or "space" in detail.lower()
            else "Another writer may have changed it, or the repository cannot be written."
        )
        return StateError(
            f"Could not record the state commit on {self.branch!r}: {detail}. {why} Nothing was lost: the previous"
            " state commit stands, and the journal keeps what this run did until a state commit records it."
        )
