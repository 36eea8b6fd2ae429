"""The write-ahead journal: nothing a provider did is lost when the controller dies.

Before each provider call the executor writes an *intent* (what it is about to ask, of which provider, which
process); after the answer, a *result* (the resource's new state record, or its deletion). Each line is flushed
and fsynced before the call goes out. After the run's state is committed, the journal is emptied. A journal that
is not empty at the start of a run is replayed first (see ``recovery``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Journal:
    """An append-only JSON-lines file, fsynced on every write."""

    def __init__(self, path: Path, *, default: Callable[[object], Any] | None = None) -> None:
        """``default``: how values JSON cannot hold are written (``Sealer.store``: sensitive values sealed, as on
        the state branch; without it they cannot be written at all)."""
        self.path = path
        self._default = default
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._next = max((int(e.get("id", 0)) for e in self.entries()), default=0) + 1
        self._lock = threading.Lock()  # order of lines
        self._sync_lock = threading.Lock()  # one fsync at a time; it covers every line written before it
        self._written = 0
        self._synced = 0

    def _write(self, record: dict[str, Any]) -> int:
        """Append one line and return only once it is on disk.

        Group commit: the threads of a run write concurrently; one fsync makes every line written before it
        durable, so a thread whose line an earlier fsync already covered does not sync again.
        """
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), default=self._default) + "\n"
        with self._lock:
            if record.get("kind") == "intent" and "id" not in record:
                record_id = self._next
                self._next += 1
                line = json.dumps(
                    {**record, "id": record_id}, sort_keys=True, separators=(",", ":"), default=self._default
                )
                line += "\n"
            else:
                record_id = int(record.get("id", 0))
            self._handle.write(line)
            self._handle.flush()
            self._written += 1
            mine = self._written
        with self._sync_lock:
            if self._synced < mine:
                with self._lock:
                    target = self._written
                os.fsync(self._handle.fileno())
                self._synced = target
        return record_id

    def intent(self, record: dict[str, Any]) -> int:
        """Record an operation about to be sent; returns its id."""
        return self._write({"kind": "intent", **{k: v for k, v in record.items() if k != "id"}})

    def result(self, op: int, state: dict[str, Any] | None, path: str) -> None:
        """Record the outcome of operation ``op``: the new state record, or None for a deletion."""
        self._write({"kind": "result", "id": op, "path": path, "state": state})

    def failed(self, op: int) -> None:
        """Record that operation ``op`` was refused: the provider changed nothing we must remember."""
        self._write({"kind": "failed", "id": op})

    def entries(self) -> list[dict[str, Any]]:
        return read_entries(self.path)

    def unresolved(self) -> list[dict[str, Any]]:
        """Intents with neither a result nor a refusal: operations whose outcome is not known."""
        return unresolved(self.entries())

    def forget(self, paths: set[str]) -> list[dict[str, Any]]:
        """Drop every entry about ``paths`` (intents, results, refusals), as ``nixgitops state rm`` does; returns
        the intents dropped. The rest is rewritten to a new file that replaces the journal in one rename."""
        entries = self.entries()
        dropped = [e for e in entries if e.get("kind") == "intent" and e.get("path") in paths]
        ids = {e.get("id") for e in dropped}
        kept = [
            e for e in entries if e.get("path") not in paths and not (e.get("kind") == "failed" and e.get("id") in ids)
        ]
        if len(kept) == len(entries):
            return dropped
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in kept:
                handle.write(json.dumps(record, sort_keys=True, separators=(",", ":"), default=self._default) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with self._lock:
            os.replace(tmp, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self._handle.close()
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        return dropped

    def clear(self, keep: list[dict[str, Any]] | None = None) -> None:
        """Forget everything but ``keep``: the state branch holds the rest now."""
        self._handle.truncate(0)
        for record in keep or []:
            self._handle.write(json.dumps(record, sort_keys=True, separators=(",", ":"), default=self._default) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The journal's entries, read without opening it for writing (a missing journal is empty)."""
    entries: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return entries
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            break  # a line torn by a crash mid-write: it was never followed by a provider call
    return entries


def unresolved(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The intents among ``entries`` with neither a result nor a refusal: operations whose outcome is not known."""
    settled = {e["id"] for e in entries if e.get("kind") in ("result", "failed")}
    return [e for e in entries if e.get("kind") == "intent" and e["id"] not in settled]
