"""The protocol's framing, driven with bytes (no process)."""

from __future__ import annotations

import pytest

from controller import protocol


def test_requests_are_one_line_with_one_key() -> None:
    line = protocol.encode(protocol.create_request("file", {"contents": "a\nb"}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line.startswith(b'{"createResourceRequest":')
    update = protocol.update_request("file", {"a": 1}, {"o": 2}, {"a": 3})
    assert update == {
        "updateResourceRequest": {
            "resource": {"type": "file", "inputProperties": {"a": 1}, "outputProperties": {"o": 2}},
            "inputProperties": {"a": 3},
        }
    }


def test_decode_response() -> None:
    body = protocol.decode_response(b'{"createResourceResponse":{"outputProperties":{"x":1}}}\n', protocol.CREATE)
    assert body == {"outputProperties": {"x": 1}}
    assert protocol.decode_response(b'{"destroyResourceResponse":{}}', protocol.DESTROY) == {}


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b"hello", "not JSON"),
        (b"[1]", "not an object"),
        (b'{"a":1,"b":2}', "exactly one key"),
        (b'{"updateResourceResponse":{"outputProperties":{}}}', "expected createResourceResponse"),
        (b'{"createResourceResponse":{}}', "outputProperties"),
    ],
)
def test_protocol_violations(line: bytes, needle: str) -> None:
    with pytest.raises(protocol.ProtocolViolation, match=needle):
        protocol.decode_response(line, protocol.CREATE)


def test_error_response_carries_the_provider_message() -> None:
    with pytest.raises(protocol.ErrorReply, match="quota exceeded"):
        protocol.decode_response(b'{"errorResponse":{"message":"quota exceeded"}}', protocol.UPDATE)


def test_decode_request_for_providers() -> None:
    kind, body = protocol.decode_request(protocol.encode(protocol.read_request("memo", {}, {"value": 1})))
    assert kind == protocol.READ and body["resource"]["outputProperties"] == {"value": 1}
