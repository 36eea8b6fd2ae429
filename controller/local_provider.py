"""The built-in ``local`` provider: NixOps4's local resource types, input for input, plus delete and read.

It is a real executable (``python -m controller.local_provider``, also installed as
``nixgitops-provider-local``) that speaks the same protocol as any other provider: one request line on stdin,
one response line on stdout, until EOF. Every operation is idempotent, so repeating one after a crash is safe.

The inputs are those of NixOps4's ``providers/local.nix``; as a deployment has no module system, this provider
applies what the module would: the defaults, the type checks (an unknown input is refused) and the coercion of
``exec.args``. What each type does follows NixOps4's ``nixops4-resources-local``; tests/test_local_parity.py sends
the same requests to both. docs/deployment-language.md lists what differs, and why.

* ``file``        ``name``, ``contents``; no outputs. Written atomically; an update writes it again; delete
                  removes it.
* ``exec``        ``executable``, ``args`` (default ``[]``; an integer becomes its decimal string), ``stdin``
                  (default null: ``/dev/null``), ``once`` (default false); output ``stdout``. Runs on create and on
                  every update, but with ``once`` an update keeps the previous output and runs nothing.
* ``memo``        ``initialize_with``; output ``value``: the first value, kept on every later update.
* ``state_file``  ``name``; no outputs. Starts a NixOps4 state file (its initial event) where there is none and
                  accepts one whose first event is valid. nixgitops keeps its state in Git, so here it is a plain
                  resource, not a state store: delete leaves the file, which may hold another tool's state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from controller import protocol
from controller.processes import CommandFailed, run

REQUIRED: Final = object()
NO_LINE_KEPT_WHOLE: Final = "\0"
"""``run``'s ``keep_stderr`` prefix: no line of a command's stderr starts with it, so only the end is kept."""


class Refused(Exception):
    """A request this provider will not carry out; the message goes back as ``errorResponse``."""


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _arg(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


# For each type, each input: what it must be (for messages), the check, and its default (or REQUIRED).
INPUTS: Final[dict[str, dict[str, tuple[str, Callable[[Any], bool], Any]]]] = {
    "file": {"name": ("a string", _text, REQUIRED), "contents": ("a string", _text, REQUIRED)},
    "exec": {
        "executable": ("a string", _text, REQUIRED),
        "args": ("a list of strings and integers", lambda v: isinstance(v, list) and all(map(_arg, v)), ()),
        "stdin": ("a string or null", lambda v: v is None or isinstance(v, str), None),
        "once": ("a boolean", lambda v: isinstance(v, bool), False),
    },
    "memo": {"initialize_with": ("any JSON value", lambda v: True, REQUIRED)},
    "state_file": {"name": ("a string", _text, REQUIRED)},
}


def _inputs(rtype: str, given: Any) -> dict[str, Any]:
    """``given`` checked as NixOps4's option module checks it, with the defaults filled in and ``args`` as strings."""
    if rtype not in INPUTS:
        raise Refused(f"the local provider has no resource type {rtype!r}; it serves {', '.join(INPUTS)}")
    if not isinstance(given, dict):
        raise Refused(f"local.{rtype}: inputProperties must be an object")
    accepted = INPUTS[rtype]
    for name in given:
        if name not in accepted:
            raise Refused(f"local.{rtype}: unknown input {name!r}; accepted: {', '.join(accepted)}")
    inputs: dict[str, Any] = {}
    for name, (what, check, default) in accepted.items():
        if name not in given:
            if default is REQUIRED:
                raise Refused(f"local.{rtype}: the input {name!r} is required")
            inputs[name] = default
        elif not check(given[name]):
            shown = json.dumps(given[name])
            raise Refused(f"local.{rtype}: the input {name!r} must be {what}, not {shown[:100]}")
        else:
            inputs[name] = given[name]
    if rtype == "exec":  # NixOps4's type: coercedTo (oneOf [ str path int ]) (x: "${x}") str
        inputs["args"] = [a if isinstance(a, str) else str(a) for a in inputs["args"]]
    return inputs


def _previous(rtype: str, outputs: Any, key: str, check: Callable[[Any], bool] = lambda v: True) -> Any:
    if not isinstance(outputs, dict) or key not in outputs or not check(outputs[key]):
        raise Refused(f"local.{rtype}: this update needs the previous outputProperties with {key!r}")
    return outputs[key]


def _temp_beside(target: str, data: bytes) -> str:
    """A new file holding ``data`` (synced) in ``target``'s directory; created as any new file (the umask applies)."""
    tmp = os.path.join(os.path.dirname(target), f".nixgitops-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _write_file(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Replace the file atomically; through a symlink and keeping an existing file's mode, as a plain write would."""
    target = os.path.realpath(inputs["name"])
    try:
        tmp = _temp_beside(target, inputs["contents"].encode())
        try:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise Refused(f"local.file: cannot write {inputs['name']}: {exc.strerror}") from None
    return {}


def _remove_file(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise Refused(f"local.file: cannot remove {name}: {exc.strerror}") from None


def _exec(inputs: Mapping[str, Any]) -> dict[str, Any]:
    argv = [inputs["executable"], *inputs["args"]]
    if any("\0" in a for a in argv):
        raise Refused("local.exec: the executable and the args cannot contain a NUL character")
    try:  # stdin null: /dev/null; stdout is kept byte for byte (no newline translation)
        done = run(argv, input=inputs["stdin"], check=False, keep_stderr=NO_LINE_KEPT_WHOLE)
    except CommandFailed as exc:
        raise Refused(f"local.exec: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.strip()[-2000:]
        raise Refused(f"local.exec: {argv[0]} exited with code {done.returncode}" + (f": {tail}" if tail else ""))
    return {"stdout": done.stdout}


# NixOps4's state file: a stream of JSON events, each a JSON Patch (RFC 6902) on the state; the first has index 0.
PATCH_FIELDS: Final = {
    "add": ("path", "value"),
    "remove": ("path",),
    "replace": ("path", "value"),
    "move": ("from", "path"),
    "copy": ("from", "path"),
    "test": ("path", "value"),
}
POINTER: Final = re.compile(r"(/([^~/]|~[01])*)*")  # RFC 6901


def _initial_event() -> bytes:
    """The event NixOps4 starts a state file with (the same bytes, but for the time)."""
    seconds, nanos = divmod(time.time_ns(), 10**9)
    digits = next(d for d in (0, 3, 6, 9) if nanos % 10 ** (9 - d) == 0)  # as chrono's to_rfc3339 shows it
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{nanos:09d}"[: digits + 1] if digits else ""
    )
    state = {"_type": "nixopsState", "deployments": {}, "resources": {}}
    event = {"index": 0, "meta": {"time": stamp + "+00:00"}, "patch": [{"op": "add", "path": "", "value": state}]}
    return (json.dumps(event, indent=2, ensure_ascii=False) + "\n").encode()


class _Object(dict[str, Any]):
    duplicated: frozenset[str] = frozenset()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) < len(pairs):
        obj.duplicated = frozenset(k for i, (k, _) in enumerate(pairs) if any(k == o for o, _ in pairs[:i]))
    return obj


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text} is out of range")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


DECODER: Final = json.JSONDecoder(object_pairs_hook=_object, parse_float=_finite, parse_constant=_no_constant)


def _fields(obj: Any, what: str, required: tuple[str, ...]) -> str | None:
    """Why ``obj`` is not an object with the ``required`` fields (each once), or None."""
    if not isinstance(obj, dict):
        return f"{what} is not an object"
    for name in required:
        if name not in obj:
            return f"{what} has no {name!r}"
        if name in getattr(obj, "duplicated", ()):
            return f"{what} has {name!r} twice"
    return None


def _state_file_problem(data: bytes) -> str | None:
    """Why ``data`` is not a state file NixOps4 would accept, or None. As NixOps4, it reads the first event only."""
    try:
        text = data.decode()
        start = len(text) - len(text.lstrip(" \t\r\n"))
        if start == len(text):
            return "no initial state event"
        event, _ = DECODER.raw_decode(text, start)
    except ValueError as exc:
        return f"error parsing initial state event: {exc}"
    problem = _fields(event, "the first event", ("index", "meta", "patch"))
    problem = problem or _fields(event["meta"], "its 'meta'", ("time",))
    if problem:
        return problem
    index, time_, patch = event["index"], event["meta"]["time"], event["patch"]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 2**64:
        return "its 'index' is not an unsigned integer"
    if index != 0:
        return f"expected the initial state event with index 0, got {index}"
    if not isinstance(time_, str):
        return "its 'meta.time' is not a string"
    if not isinstance(patch, list):
        return "its 'patch' is not a list"
    for n, operation in enumerate(patch):
        op = operation.get("op") if isinstance(operation, dict) else None
        if not isinstance(op, str) or op not in PATCH_FIELDS:
            return f"operation {n} of its patch has no valid 'op' ({', '.join(PATCH_FIELDS)})"
        problem = _fields(operation, f"operation {n} of its patch", ("op", *PATCH_FIELDS[op]))
        if problem:
            return problem
        for name in ("path", "from"):
            if name in PATCH_FIELDS[op] and not (
                isinstance(operation[name], str) and POINTER.fullmatch(operation[name])
            ):
                return f"operation {n} of its patch: {name!r} is not a JSON pointer"
    return None


def _read(name: str) -> bytes | None:
    """The file's bytes, or None where there is none; OSError where it cannot be read (a directory, say)."""
    try:
        with open(name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _read_or_refuse(name: str) -> bytes | None:
    try:
        return _read(name)
    except OSError as exc:
        raise Refused(f"local.state_file: cannot read {name}: {exc.strerror}") from None


def _looks(name: str, right: Callable[[bytes], bool]) -> bool:
    """Whether the file is there, readable, and ``right``."""
    try:
        data = _read(name)
    except OSError:
        return False
    return data is not None and right(data)


def _state_file(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Start the state file where there is none (atomically, complete), else check its first event."""
    name = inputs["name"]
    data = _read_or_refuse(name)
    if data is None:
        try:
            tmp = _temp_beside(os.path.abspath(name), _initial_event())
            try:
                os.link(tmp, name)
                return {}
            except FileExistsError:  # started meanwhile: check it as any other
                data = _read_or_refuse(name)
            finally:
                os.unlink(tmp)
        except OSError as exc:
            raise Refused(f"local.state_file: cannot create {name}: {exc.strerror}") from None
    problem = "it is gone" if data is None else _state_file_problem(data)
    if problem:
        raise Refused(f"local.state_file: {name} is not a NixOps4 state file: {problem}")
    return {}


def _stateful(body: Mapping[str, Any]) -> bool:
    return body.get("isStateful") is not False


def create(body: Mapping[str, Any]) -> dict[str, Any]:
    rtype = body["type"]
    inputs = _inputs(rtype, body["inputProperties"])
    if rtype == "file":
        return _write_file(inputs)
    if rtype == "exec":
        if inputs["once"] and not _stateful(body):
            raise Refused("local.exec: once = true needs state (isStateful must be true)")
        return _exec(inputs)
    if rtype == "memo":
        if not _stateful(body):
            raise Refused("local.memo: a memo must be stateful (isStateful must be true)")
        return {"value": inputs["initialize_with"]}
    return _state_file(inputs)


def update(body: Mapping[str, Any]) -> dict[str, Any]:
    old = body["resource"]
    rtype, previous = old["type"], old.get("outputProperties")
    inputs = _inputs(rtype, body["inputProperties"])
    if rtype == "file":
        outputs = _write_file(inputs)
        was = old["inputProperties"].get("name")
        if isinstance(was, str) and os.path.abspath(was) != os.path.abspath(inputs["name"]):
            _remove_file(was)
        return outputs
    if rtype == "exec":
        if inputs["once"]:
            return {"stdout": _previous(rtype, previous, "stdout", _text)}
        return _exec(inputs)
    if rtype == "memo":
        return {"value": _previous(rtype, previous, "value")}
    return _state_file(inputs)  # the file under the old name stays, as on delete


def destroy(body: Mapping[str, Any]) -> dict[str, Any]:
    resource = body["resource"]
    rtype = resource["type"]
    if rtype not in INPUTS:
        raise Refused(f"the local provider has no resource type {rtype!r}")
    if rtype == "file":
        _remove_file(resource["inputProperties"]["name"])
    return {}


def read(body: Mapping[str, Any]) -> dict[str, Any]:
    """Report a resource as it is: its outputs, and ``inSync: false`` when it no longer matches its inputs.

    Refuses ("cannot tell") where there is nothing to look at: an exec without ``once``, and an exec with ``once``
    or a memo without its recorded outputs (a create that may not have happened).
    """
    resource = body["resource"]
    rtype, outputs = resource["type"], resource.get("outputProperties")
    inputs = _inputs(rtype, resource["inputProperties"])
    if rtype == "file":
        return {"outputProperties": {}, "inSync": _looks(inputs["name"], inputs["contents"].encode().__eq__)}
    if rtype == "state_file":
        return {"outputProperties": {}, "inSync": _looks(inputs["name"], lambda data: not _state_file_problem(data))}
    if rtype == "memo" and isinstance(outputs, dict) and "value" in outputs:
        return {"outputProperties": {"value": outputs["value"]}, "inSync": True}
    if rtype == "exec" and inputs["once"] and isinstance(outputs, dict) and _text(outputs.get("stdout")):
        return {"outputProperties": {"stdout": outputs["stdout"]}, "inSync": True}
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
        protocol.encode(body)  # a string with a lone surrogate (\ud800) is not text: refused before anything is done
        result = handler(body)
        if kind == protocol.DESTROY:
            return protocol.response(kind)
        if kind == protocol.READ:
            return protocol.response(kind, **result)
        return protocol.response(kind, outputProperties=result)
    except Refused as exc:
        return protocol.error_response(str(exc))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ValueError: ProtocolViolation, Unicode
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
