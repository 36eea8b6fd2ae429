"""Real traffic between nixgitops and a provider process matches the published JSON Schema.

The shell provider records every line it reads and writes. Each is validated against our schema
(controller/schema/provider-protocol-v0.json) and, where NixOps4 defines the message, against NixOps4's own
schema v0 (tfproto revision, which has destroy) kept in ../shared/reference, to prove wire compatibility.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import ROOT, Checkout
from referencing import Registry, Resource

from controller import local_provider, protocol

SCHEMA = json.loads((ROOT / "controller" / "schema" / "provider-protocol-v0.json").read_text())
NIXOPS4 = ROOT.parent / "shared" / "reference" / "nixops4-resource-schema-v0.tfproto-64dd7a4.json"


def ours() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    return cls(SCHEMA)


def nixops4() -> jsonschema.protocols.Validator:
    if not NIXOPS4.exists():
        pytest.skip(f"NixOps4's reference schema is not at {NIXOPS4} (CI has ../shared beside the clone)")
    schema = json.loads(NIXOPS4.read_text())
    # Its root also says additionalProperties: false without naming any property, which would reject every
    # message; the Request and Response definitions are what it means.
    del schema["additionalProperties"]
    # The reference schema points at json-patch's schema online for a message we never send; a stub keeps
    # validation offline.
    stub = Resource.from_contents({"$schema": "http://json-schema.org/draft-04/schema#", "type": "array"})
    registry: Registry[Any] = Registry().with_resource("https://json.schemastore.org/json-patch.json", stub)
    return jsonschema.Draft4Validator(schema, registry=registry)


def recorded(log: Path) -> list[tuple[str, dict[str, Any]]]:
    lines = []
    for line in log.read_text().splitlines():
        _, direction, payload = line.split(" ", 2)
        lines.append((direction, json.loads(payload)))
    return lines


def test_schema_accepts_every_message_we_build_and_rejects_junk() -> None:
    validator = ours()
    for message in (
        protocol.create_request("file", {"name": "a"}),
        protocol.update_request("file", {"name": "a"}, {}, {"name": "b"}),
        protocol.destroy_request("file", {"name": "a"}, {}),
        protocol.read_request("file", {"name": "a"}, {}),
        protocol.response(protocol.CREATE, outputProperties={"x": 1}),
        protocol.response(protocol.DESTROY),
        protocol.error_response("no"),
    ):
        validator.validate(message)
    for junk in ({}, {"createResourceRequest": {"type": "file"}}, {"errorResponse": {}}, {"other": {}}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(junk)


def test_real_traffic_matches_the_schemas(
    checkout: Checkout, notes_provider: Callable[[], str], notes_log: Path
) -> None:
    deployment = """
{ members, providers, ... }:
{
  DECL
  members.a = { type = providers.notes.note; inputs.text = "TEXT"; };
  members.b = { type = providers.notes.note; inputs.text = members.a.outputs.id; };
}
""".replace("DECL", notes_provider())
    checkout.deploy(deployment.replace("TEXT", "one"))
    checkout.ok("apply", "--yes")
    checkout.deploy(deployment.replace("TEXT", "two"))
    checkout.ok("apply", "--yes")
    checkout.ok("destroy", "--yes")

    traffic = recorded(notes_log)
    kinds = [next(iter(message)) for _, message in traffic]
    for kind in ("createResourceRequest", "updateResourceRequest", "destroyResourceRequest"):
        assert kind in kinds, f"the scenario should exercise {kind}"
    validator, reference = ours(), nixops4()
    for direction, message in traffic:
        validator.validate(message)
        if "readResourceRequest" not in message:
            reference.validate(message)
        if direction == ">":
            assert next(iter(message)).endswith("Request")


def test_local_provider_answers_match_the_schema(tmp_path: Path) -> None:
    validator = ours()
    target = str(tmp_path / "f")
    requests = [
        protocol.create_request("file", {"name": target, "contents": "x"}),
        protocol.update_request("file", {"name": target, "contents": "x"}, {}, {"name": target, "contents": "y"}),
        protocol.read_request("file", {"name": target, "contents": "y"}, {}),
        protocol.destroy_request("file", {"name": target, "contents": "y"}, {}),
        protocol.create_request("exec", {"executable": "echo", "args": ["hi"]}),
        protocol.create_request("memo", {"initialize_with": [1, 2]}),
        protocol.create_request("nope", {}),
    ]
    for request in requests:
        validator.validate(request)
        validator.validate(local_provider.handle(protocol.encode(request)))
