#!/usr/bin/env python3
"""A test provider that records the order of the requests it serves, for the dependency-order properties.

    recorder.py LOG [DESTROY_SECONDS]

Resource type "memo": inputs "id" (the resource's path, so the log can name it) and any other JSON values; output
"value", "v" and the first 16 hex digits of the SHA-256 of the inputs as canonical JSON (sorted keys, no spaces),
recomputed on every create and update, so a reader's inputs change whenever what it reads changes.

Every request appends two lines to LOG, one when it starts and one when it ends (before the response is written,
so a request nixgitops sends after reading a response is always logged after that response's END):

    <time.monotonic_ns()> <pid> START|END create|update|destroy|read <id>

A destroy holds between its START and its END until another request of this provider starts, or DESTROY_SECONDS
(default 0) pass, like a slow cloud API: deletes that nixgitops sends at the same time then overlap in the log for
certain, instead of by the luck of process start-up. (A holding destroy waits on a FIFO of its own, LOG.<pid>.fifo,
to which every START writes a byte.)

Several processes of this provider run at once and share LOG: each line is one write() to a file opened with
O_APPEND, under an exclusive flock, so lines never interleave and their order in the file is the order of events
(the monotonic clock, read under the lock, never goes back from one line to the next).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import select
import sys
import time
from typing import Any

KINDS = {
    "createResourceRequest": "create",
    "updateResourceRequest": "update",
    "destroyResourceRequest": "destroy",
    "readResourceRequest": "read",
}


def value_of(inputs: dict[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "v" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def record(fd: int, event: str, kind: str, ident: str) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        os.write(fd, f"{time.monotonic_ns()} {os.getpid()} {event} {kind} {ident}\n".encode())
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
    if event == "START":  # wake every destroy that holds
        for fifo in glob.glob(glob.escape(sys.argv[1]) + ".*.fifo"):
            with contextlib.suppress(OSError):  # no reader any more, or a full pipe: nobody to wake
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                try:
                    os.write(writer, b"x")
                finally:
                    os.close(writer)


def hold(seconds: float) -> None:
    """Until another request starts, or ``seconds`` pass."""
    if seconds <= 0:
        return
    fifo = f"{sys.argv[1]}.{os.getpid()}.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        select.select([reader], [], [], seconds)
    finally:
        os.close(reader)
        os.unlink(fifo)


def serve(kind: str, body: dict[str, Any], destroy_seconds: float) -> tuple[str, dict[str, Any]]:
    if kind == "create":
        if body.get("type") != "memo":
            raise ValueError(f"unknown resource type {body.get('type')!r}")
        return "createResourceResponse", {"outputProperties": {"value": value_of(body["inputProperties"])}}
    if kind == "update":
        return "updateResourceResponse", {"outputProperties": {"value": value_of(body["inputProperties"])}}
    if kind == "destroy":
        hold(destroy_seconds)
        return "destroyResourceResponse", {}
    resource = body["resource"]
    return "readResourceResponse", {"outputProperties": {"value": value_of(resource["inputProperties"])}}


def main() -> None:
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    destroy_seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    for line in sys.stdin:
        request = json.loads(line)
        (name, body), *_ = request.items()
        kind = KINDS.get(name, name)
        inputs = (
            body.get("inputProperties")
            if kind in ("create", "update")
            else body.get("resource", {}).get("inputProperties")
        )
        ident = str((inputs or {}).get("id", "?"))
        record(fd, "START", kind, ident)
        try:
            answer, payload = serve(kind, body, destroy_seconds)
        except (KeyError, ValueError) as exc:
            answer, payload = "errorResponse", {"message": f"recorder: cannot serve {name}: {exc}"}
        record(fd, "END", kind, ident)
        sys.stdout.write(json.dumps({answer: payload}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
