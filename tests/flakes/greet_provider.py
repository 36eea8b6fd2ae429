"""The ``greet`` provider of tests/test_flakes.py.

The test copies this file into a deployment's repository as ``provider.py``, with ``VERSION`` set to what the
commit says; the deployment's flake builds it into the Nix store (a ``bin/provider`` wrapper that runs it with
the test's Python) and declares that store path as the provider's executable. The outputs say which build
served a request.

Resource type ``thing``: input ``name``; outputs ``greeting`` and ``version``, on create, update and read.
"""

from __future__ import annotations

import json
import sys
from typing import Any

VERSION = "1"


def outputs(inputs: dict[str, Any]) -> dict[str, str]:
    return {"greeting": f"hello {inputs['name']}", "version": VERSION}


def answer(request: dict[str, Any]) -> dict[str, Any]:
    ((kind, body),) = request.items()
    if kind == "createResourceRequest":
        if body.get("type") != "thing":
            return {"errorResponse": {"message": f"greet: unknown resource type {body.get('type')!r}"}}
        return {"createResourceResponse": {"outputProperties": outputs(body["inputProperties"])}}
    if kind == "updateResourceRequest":
        return {"updateResourceResponse": {"outputProperties": outputs(body["inputProperties"])}}
    if kind == "destroyResourceRequest":
        return {"destroyResourceResponse": {}}
    if kind == "readResourceRequest":
        resource = body["resource"]
        return {"readResourceResponse": {"outputProperties": outputs(resource["inputProperties"]), "inSync": True}}
    return {"errorResponse": {"message": f"greet: cannot serve {kind}"}}


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        print(f"greet {VERSION} ({__file__}): {next(iter(request))}", file=sys.stderr, flush=True)
        sys.stdout.write(json.dumps(answer(request)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
