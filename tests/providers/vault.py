#!/usr/bin/env python3
"""A test provider with a sensitive output, and the bad habits real ones have: it prints what it was given and what
it makes on stderr, quotes its input in its errors, and echoes it in an output nobody declared sensitive.

    vault.py LOG

Resource type "db": input "admin" (a password) and "fail" (true: refuse, quoting the password). Outputs "password"
(made from the admin password: "pw-" and 16 hex digits of its SHA-256; declared sensitive by the deployment),
"host" (plain) and "echo" (the admin password again). Each request appends its kind to LOG, so a test can tell
whether the provider was called at all.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any


def made(admin: str) -> str:
    return "pw-" + hashlib.sha256(admin.encode()).hexdigest()[:16]


def answer(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind == "destroyResourceRequest":
        return {"destroyResourceResponse": {}}
    resource = body.get("resource") or {}
    inputs = body.get("inputProperties") or resource.get("inputProperties") or {}
    admin = str(inputs.get("admin"))
    print(f"vault: {kind} with admin password {admin}", file=sys.stderr, flush=True)
    if inputs.get("fail"):
        return {"errorResponse": {"message": f"cannot log in as admin with password {admin}"}}
    outputs = {"password": made(admin), "host": "db.internal", "echo": admin}
    print(f"vault: made password {outputs['password']}", file=sys.stderr, flush=True)
    name = {"createResourceRequest": "createResourceResponse", "updateResourceRequest": "updateResourceResponse"}
    if kind == "readResourceRequest":
        return {"readResourceResponse": {"outputProperties": outputs, "inSync": True}}
    return {name[kind]: {"outputProperties": outputs}}


def main() -> None:
    log = sys.argv[1]
    for line in sys.stdin:
        message = json.loads(line)
        kind = next(iter(message))
        with open(log, "a") as handle:
            handle.write(kind + "\n")
        sys.stdout.write(json.dumps(answer(kind, message[kind])) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
