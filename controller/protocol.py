"""The resource provider protocol (NixOps4's schema v0 plus destroy and read), without any I/O.

One JSON object per line. Each message has exactly one key naming its kind. Requests go to the provider's
stdin, responses come back on its stdout; ``errorResponse {message}`` answers any request. The functions
here build, encode and decode messages; ``provider_client`` moves the bytes. docs/provider-protocol.md
specifies the protocol and controller/schema/provider-protocol-v0.json is its JSON Schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from controller.sensitive import wire

CREATE: Final = "createResourceRequest"
UPDATE: Final = "updateResourceRequest"
DESTROY: Final = "destroyResourceRequest"
READ: Final = "readResourceRequest"
ERROR: Final = "errorResponse"

RESPONSE_FOR: Final = {
    CREATE: "createResourceResponse",
    UPDATE: "updateResourceResponse",
    DESTROY: "destroyResourceResponse",
    READ: "readResourceResponse",
}


class ProtocolViolation(ValueError):
    """A line that is not a valid message of the expected kind."""


class ErrorReply(Exception):
    """The provider answered ``errorResponse``; the message is the provider's."""


def _extant(rtype: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None) -> dict[str, Any]:
    resource: dict[str, Any] = {"type": rtype, "inputProperties": dict(inputs)}
    if outputs is not None:
        resource["outputProperties"] = dict(outputs)
    return resource


def create_request(rtype: str, inputs: Mapping[str, Any], *, is_stateful: bool = True) -> dict[str, Any]:
    return {CREATE: {"type": rtype, "inputProperties": dict(inputs), "isStateful": is_stateful}}


def update_request(
    rtype: str, old_inputs: Mapping[str, Any], old_outputs: Mapping[str, Any], new_inputs: Mapping[str, Any]
) -> dict[str, Any]:
    return {UPDATE: {"resource": _extant(rtype, old_inputs, old_outputs), "inputProperties": dict(new_inputs)}}


def destroy_request(rtype: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    return {DESTROY: {"resource": _extant(rtype, inputs, outputs)}}


def read_request(rtype: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    return {READ: {"resource": _extant(rtype, inputs, outputs)}}


def kind_of(message: Mapping[str, Any]) -> str:
    if len(message) != 1:
        raise ProtocolViolation(f"a message must have exactly one key naming its kind, not {sorted(message)}")
    return next(iter(message))


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as one line of UTF-8 JSON, newline included; sensitive values as they are (the provider must
    have them)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=wire).encode() + b"\n"


def _parse(line: bytes) -> dict[str, Any]:
    text = line.decode("utf-8", errors="replace").strip()
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        shown = text if len(text) <= 200 else text[:200] + "..."
        raise ProtocolViolation(f"the line is not JSON: {shown!r}") from None
    if not isinstance(message, dict):
        raise ProtocolViolation(f"the line is JSON but not an object: {text[:200]!r}")
    return message


def decode_response(line: bytes, request_kind: str) -> dict[str, Any]:
    """The body of the response to ``request_kind``; raises ``ErrorReply`` or ``ProtocolViolation``."""
    message = _parse(line)
    kind = kind_of(message)
    body = message[kind]
    if kind == ERROR:
        text = body.get("message") if isinstance(body, dict) else None
        raise ErrorReply(text if isinstance(text, str) else json.dumps(body))
    expected = RESPONSE_FOR[request_kind]
    if kind != expected:
        raise ProtocolViolation(f"expected {expected} or {ERROR}, got {kind}")
    if not isinstance(body, dict):
        raise ProtocolViolation(f"{kind} must be an object")
    if expected != RESPONSE_FOR[DESTROY] and not isinstance(body.get("outputProperties"), dict):
        raise ProtocolViolation(f"{kind} must carry an object `outputProperties`")
    return body


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """For providers: the kind and body of one request line."""
    message = _parse(line)
    kind = kind_of(message)
    body = message[kind]
    if not isinstance(body, dict):
        raise ProtocolViolation(f"{kind} must be an object")
    return kind, body


def response(request_kind: str, **body: Any) -> dict[str, Any]:
    return {RESPONSE_FOR[request_kind]: body}


def error_response(message: str) -> dict[str, Any]:
    return {ERROR: {"message": message}}


# How NixOps4's local provider says it cannot delete: its main branch does not know the request (it prints a parse
# error and exits), its tfproto branch answers "Destroy not implemented by resource provider".
_CANNOT_DELETE = re.compile(r"unknown variant `destroyResourceRequest`|destroy not implemented", re.IGNORECASE)


def cannot_delete(error: str) -> bool:
    """Whether a failed ``destroyResourceRequest`` failed because the provider does not implement deleting."""
    return _CANNOT_DELETE.search(error) is not None
