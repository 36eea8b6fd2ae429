"""The built-in ``local`` provider: ``file``, ``exec`` and ``memo``, with NixOps4's inputs and outputs.

It is a real executable (``python -m controller.local_provider``, also installed as
``nixgitops-provider-local``) that speaks the same protocol as any other provider: one request line on stdin,
one response line on stdout, until EOF. Every operation is idempotent, so repeating one after a crash is safe.

* ``file``  inputs ``name``, ``contents``; outputs none. Writes the file atomically; destroy removes it.
* ``exec``  inputs ``executable``, ``args``, optional ``stdin``; output ``stdout``. Runs on create and update.
* ``memo``  input ``initialize_with``; output ``value``: the first value, kept on every later update.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from controller import protocol
from controller.processes import CommandFailed, run


class Refused(Exception):
    """A request this provider will not carry out; the message goes back as ``errorResponse``."""


def _check(rtype: str, inputs: Mapping[str, Any], required: dict[str, type], optional: dict[str, type]) -> None:
    for name in required:
        if name not in inputs:
            raise Refused(f"local.{rtype}: the input {name!r} is required")
    for name, value in inputs.items():
        kind = required.get(name) or optional.get(name)
        if kind is None:
            raise Refused(f"local.{rtype}: unknown input {name!r}; accepted: {', '.join([*required, *optional])}")
        if kind is not object and not isinstance(value, kind):
            raise Refused(f"local.{rtype}: the input {name!r} must be a {kind.__name__}")
    if rtype == "exec" and not all(isinstance(a, str) for a in inputs["args"]):
        raise Refused("local.exec: every element of 'args' must be a string")


def _write_file(inputs: Mapping[str, Any]) -> dict[str, Any]:
    _check("file", inputs, {"name": str, "contents": str}, {})
    target = os.path.abspath(inputs["name"])
    directory = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".nixgitops-", dir=directory)
    except OSError as exc:
        raise Refused(f"local.file: cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(inputs["contents"])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        os.unlink(tmp)
        raise Refused(f"local.file: cannot write {target}: {exc.strerror}") from None
    return {}


def _remove_file(inputs: Mapping[str, Any]) -> None:
    try:
        os.unlink(inputs["name"])
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise Refused(f"local.file: cannot remove {inputs['name']}: {exc.strerror}") from None


def _exec(inputs: Mapping[str, Any]) -> dict[str, Any]:
    _check("exec", inputs, {"executable": str, "args": list}, {"stdin": str})
    argv = [inputs["executable"], *inputs["args"]]
    try:
        done = run(argv, input=inputs.get("stdin", ""), check=False)
    except CommandFailed as exc:
        raise Refused(f"local.exec: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.strip()[-2000:]
        raise Refused(f"local.exec: {argv[0]} exited with code {done.returncode}" + (f": {tail}" if tail else ""))
    return {"stdout": done.stdout}


def _memo(inputs: Mapping[str, Any]) -> dict[str, Any]:
    _check("memo", inputs, {"initialize_with": object}, {})
    return {"value": inputs["initialize_with"]}


def create(body: Mapping[str, Any]) -> dict[str, Any]:
    rtype, inputs = body["type"], body["inputProperties"]
    if rtype == "file":
        return _write_file(inputs)
    if rtype == "exec":
        return _exec(inputs)
    if rtype == "memo":
        if body.get("isStateful") is False:
            raise Refused("local.memo: a memo must be stateful (isStateful must be true)")
        return _memo(inputs)
    raise Refused(f"the local provider has no resource type {rtype!r}; it serves file, exec and memo")


def update(body: Mapping[str, Any]) -> dict[str, Any]:
    old, inputs = body["resource"], body["inputProperties"]
    rtype = old["type"]
    if rtype == "file":
        outputs = _write_file(inputs)
        if os.path.abspath(old["inputProperties"].get("name", "")) != os.path.abspath(inputs["name"]):
            _remove_file(old["inputProperties"])
        return outputs
    if rtype == "exec":
        return _exec(inputs)
    if rtype == "memo":
        _memo(inputs)
        previous = old.get("outputProperties")
        if not isinstance(previous, dict) or "value" not in previous:
            raise Refused("local.memo: an update needs the previous outputProperties with 'value'")
        return {"value": previous["value"]}
    raise Refused(f"the local provider has no resource type {rtype!r}")


def destroy(body: Mapping[str, Any]) -> dict[str, Any]:
    resource = body["resource"]
    if resource["type"] == "file":
        _remove_file(resource["inputProperties"])
    return {}


def read(body: Mapping[str, Any]) -> dict[str, Any]:
    """Report a resource as it is: its outputs, and ``inSync: false`` when it no longer matches its inputs.

    Refuses ("cannot tell") where the local types have nothing to look at: exec, and a memo without outputs.
    """
    resource = body["resource"]
    rtype, inputs = resource["type"], resource["inputProperties"]
    if rtype == "file":
        name = inputs.get("name", "")
        try:
            with open(name) as f:
                current: str | None = f.read()
        except OSError:
            current = None
        return {"outputProperties": {}, "inSync": current == inputs.get("contents")}
    if rtype == "memo" and isinstance(resource.get("outputProperties"), dict):
        return {"outputProperties": dict(resource["outputProperties"]), "inSync": True}
    raise Refused(f"local.{rtype}: cannot tell the state of this resource by looking; repeat the operation")


HANDLERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    protocol.CREATE: create,
    protocol.UPDATE: update,
    protocol.DESTROY: destroy,
    protocol.READ: read,
}


def handle(line: bytes) -> dict[str, Any]:
    """The response to one request line."""
    try:
        kind, body = protocol.decode_request(line)
        handler = HANDLERS.get(kind)
        if handler is None:
            return protocol.error_response(f"the local provider does not support {kind}")
        result = handler(body)
        if kind == protocol.DESTROY:
            return protocol.response(kind)
        if kind == protocol.READ:
            return protocol.response(kind, **result)
        return protocol.response(kind, outputProperties=result)
    except Refused as exc:
        return protocol.error_response(str(exc))
    except (protocol.ProtocolViolation, KeyError, TypeError, AttributeError) as exc:
        return protocol.error_response(f"malformed request: {exc}")


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        if not line.strip():
            continue
        stdout.write(protocol.encode(handle(line)))
        stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
