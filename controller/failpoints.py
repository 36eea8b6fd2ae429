"""Named points at which the crash tests make this process die, as a kill -9 would, at an exact step of a run.

Random kills find the common windows; a failpoint hits the narrow ones on purpose: between the journal's intent and
the provider request, between a provider's answer and the journal's record of it, between the state objects and
the state ref, between a push and the record that it happened. Armed only by the environment of a test:

    NIXGITOPS_FAILPOINT=name        die the first time ``name`` is reached
    NIXGITOPS_FAILPOINT=name:3      die the third time
    NIXGITOPS_FAILPOINT_FILL=FILE   instead of dying, fill the file system of FILE (write FILE until it is full)

Unset, ``hit`` is one comparison. The points are listed in POINTS and in docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = (
    "provider-request",  # the intent is journaled; the request has not gone out
    "provider-response",  # the provider answered; the journal does not have the result yet
    "state-commit",  # the state objects are written; the state ref has not moved
    "journal-clear",  # the state commit is made; the journal is not cleared yet
    "push",  # the state commit is local; the push has not started
    "pushed",  # the push succeeded; the controller has not recorded that it did
)

_name, _, _nth = os.environ.get("NIXGITOPS_FAILPOINT", "").partition(":")
_ARMED = _name or None
_AT = int(_nth) if _nth.isdigit() else 1
_FILL = os.environ.get("NIXGITOPS_FAILPOINT_FILL") or None
_seen = 0
_lock = threading.Lock()


def hit(name: str) -> None:
    """Die here if this point is armed and this is the time."""
    global _seen
    if name != _ARMED:
        return
    with _lock:
        _seen += 1
        if _seen != _AT:
            return
        if _FILL is not None:
            _fill(_FILL)
        else:
            os.kill(os.getpid(), signal.SIGKILL)


def _fill(path: str) -> None:
    """Write ``path`` until its file system has no space left."""
    chunk = b"\0" * 65536
    with open(path, "ab") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
