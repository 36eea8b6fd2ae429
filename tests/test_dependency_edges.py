"""Dependency edges through the real CLI, real Nix and real provider processes: what is recorded, and the order of
deletes for reads that leave no edge (see docs/decisions.md, "Dependency edges")."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

from conftest import Checkout

# A provider whose destroy of the resource with id "late" holds (at most 3 s) until the destroy of "db" starts: if
# nixgitops ever sends db's destroy while late's is still running, the log shows it for certain. The holding
# destroy waits on the FIFO LOG.fifo, to which db's destroy writes a byte.
PROVIDER = """
import json, os, select, sys
log = sys.argv[1]
def note(text):
    with open(log, "a") as f:
        f.write(text + "\\n")
for line in sys.stdin:
    request = json.loads(line)
    kind = next(iter(request))
    body = request[kind]
    if kind == "destroyResourceRequest":
        ident = body["resource"]["inputProperties"]["id"]
        note("START destroy " + ident)
        if ident == "db":
            try:
                writer = os.open(log + ".fifo", os.O_WRONLY | os.O_NONBLOCK)
                os.write(writer, b"x")
                os.close(writer)
            except OSError:
                pass  # nobody holds
        if ident == "late":
            reader = os.open(log + ".fifo", os.O_RDONLY | os.O_NONBLOCK)
            select.select([reader], [], [], 3)
            os.close(reader)
        note("END destroy " + ident)
        print(json.dumps({"destroyResourceResponse": {}}), flush=True)
    elif kind in ("createResourceRequest", "updateResourceRequest") and body["inputProperties"]["id"] == "bad":
        print(json.dumps({"errorResponse": {"message": "bad on purpose"}}), flush=True)
    elif kind in ("createResourceRequest", "updateResourceRequest"):
        inputs = body["inputProperties"]
        note(kind + " " + inputs["id"])
        outputs = {"port": 5432, "text": inputs["id"]}
        answer = kind.replace("Request", "Response")
        print(json.dumps({answer: {"outputProperties": outputs}}), flush=True)
    else:
        print(json.dumps({"errorResponse": {"message": "unsupported"}}), flush=True)
"""


def provider(tmp_path: Path) -> tuple[str, Path]:
    script = tmp_path / "provider.py"
    script.write_text(PROVIDER)
    log = tmp_path / "provider.log"
    log.touch()
    os.mkfifo(f"{log}.fifo")
    declaration = (
        f'providers.p = {{ executable = "{sys.executable}"; args = [ "{script}" "{log}" ];'
        ' resourceTypes = [ "thing" ]; };'
    )
    return declaration, log


def deployment(declaration: str, members: str) -> str:
    return "{ members, providers, ... }: {\n  " + declaration + "\n" + textwrap.dedent(members) + "}\n"


def record(checkout: Checkout, path: str) -> dict[str, object]:
    return json.loads(checkout.ok("state", "show", path).stdout)  # type: ignore[no-any-return]


def test_edges_are_exact_for_reads_of_known_outputs_in_one_string(checkout: Checkout, tmp_path: Path) -> None:
    """Issue 12: a resource reading two others, or reading an output known when it was evaluated, lost edges."""
    declaration, _ = provider(tmp_path)
    a = '  members.a = { type = providers.p.thing; inputs.id = "a"; };\n'
    checkout.deploy(deployment(declaration, a))
    checkout.ok("apply", "--yes", "-q")
    b = '  members.b = { type = providers.p.thing; inputs.id = "b-${members.a.outputs.text}"; };\n'
    c = (
        "  members.c = { type = providers.p.thing;"
        ' inputs = { id = "c"; both = "${members.a.outputs.text}+${members.b.outputs.text}"; }; };\n'
    )
    checkout.deploy(deployment(declaration, a + b + c))
    planned = json.loads(checkout.ok("plan", "--json").stdout)
    depends = {ch["path"]: set(ch["dependsOn"]) for ch in planned["changes"]}
    # in the plan, c's string stops at b's unknown output: a's part is read once b is known, during apply
    assert depends["c"] == {"b"} and depends["b"] == {"a"}
    checkout.ok("apply", "--yes", "-q")
    assert record(checkout, "c")["dependencies"] == ["a", "b"]
    assert record(checkout, "b")["dependencies"] == ["a"]


def test_a_read_that_leaves_no_edge_is_still_deleted_first(checkout: Checkout, tmp_path: Path) -> None:
    """Two resources read db's port (a number): only the first one evaluated gets an edge; the other ("late")
    is ordered by its rank, so db is not destroyed while late's destroy runs."""
    declaration, log = provider(tmp_path)
    db = '  members.db = { type = providers.p.thing; inputs.id = "db"; };\n'
    checkout.deploy(deployment(declaration, db))
    checkout.ok("apply", "--yes", "-q")
    readers = (
        '  members.early = { type = providers.p.thing; inputs.id = "early:${toString members.db.outputs.port}"; };\n'
        '  members.late = { type = providers.p.thing; inputs.id = "late"; inputs.port = members.db.outputs.port; };\n'
    )
    checkout.deploy(deployment(declaration, db + readers))
    checkout.ok("apply", "--yes", "-q")
    early, late, base = (record(checkout, p) for p in ("early", "late", "db"))
    assert early["dependencies"] == ["db"]
    assert late["dependencies"] == [], "the documented inexact read: if this is now exact, update the docs"
    assert int(late["rank"]) > int(base["rank"])  # type: ignore[call-overload]
    checkout.ok("destroy", "--yes", "-q")
    lines = log.read_text().splitlines()
    assert lines.index("END destroy late") < lines.index("START destroy db"), lines
    assert lines.index("END destroy early:5432") < lines.index("START destroy db"), lines


def test_a_new_read_with_the_same_inputs_is_recorded_without_any_change(checkout: Checkout, tmp_path: Path) -> None:
    """`late`'s port becomes db's output, equal to the literal it replaces: no change to apply, but the edge is
    recorded all the same, and the delete order follows it."""
    declaration, log = provider(tmp_path)
    db = '  members.db = { type = providers.p.thing; inputs.id = "db"; };\n'
    late = '  members.late = { type = providers.p.thing; inputs = { id = "late"; port = PORT; }; };\n'
    checkout.deploy(deployment(declaration, db))
    checkout.ok("apply", "--yes", "-q")
    checkout.deploy(deployment(declaration, db + late.replace("PORT", "5432")))
    checkout.ok("apply", "--yes", "-q")
    assert record(checkout, "late")["dependencies"] == []
    checkout.deploy(deployment(declaration, db + late.replace("PORT", "members.db.outputs.port")))
    done = checkout.ok("apply", "--yes")
    assert "No changes" in done.stdout and "Recorded what 2 unchanged resource(s) read" in done.stdout
    assert record(checkout, "late")["dependencies"] == ["db"] and record(checkout, "db")["read"] is True
    checkout.ok("destroy", "--yes", "-q")
    lines = log.read_text().splitlines()
    assert lines.index("END destroy late") < lines.index("START destroy db"), lines


def test_a_silent_reader_stays_ordered_when_the_first_reader_fails(checkout: Checkout, tmp_path: Path) -> None:
    """`early` sorts first and reads db's port first, so `late` reads it without a trace, and `early` fails: no
    record holds an edge to db any more, but db is marked as read, so its delete still waits for `late`."""
    declaration, log = provider(tmp_path)
    db = '  members.db = { type = providers.p.thing; inputs.id = "db"; };\n'
    late = (
        '  members.late = { type = providers.p.thing; inputs = { id = "late"; port = members.db.outputs.port; }; };\n'
    )
    early = (
        '  members.early = { type = providers.p.thing; inputs = { id = "bad"; port = members.db.outputs.port; }; };\n'
    )
    checkout.deploy(deployment(declaration, db))
    checkout.ok("apply", "--yes", "-q")
    checkout.deploy(deployment(declaration, db + late))
    checkout.ok("apply", "--yes", "-q")
    checkout.deploy(deployment(declaration, db + late + early))
    assert checkout.run("apply", "--yes", "-q").returncode != 0  # early fails
    assert record(checkout, "late")["dependencies"] == []  # read without a trace: early forced it first
    checkout.ok("destroy", "--yes", "-q")
    lines = log.read_text().splitlines()
    assert lines.index("END destroy late") < lines.index("START destroy db"), lines


def test_a_new_read_of_a_resource_applied_with_it_records_the_reader_again(checkout: Checkout, tmp_path: Path) -> None:
    """db and late were applied in one run (the same rank); late now reads db with the same inputs: it is
    recorded again, after db, without any provider call."""
    declaration, log = provider(tmp_path)
    db = '  members.db = { type = providers.p.thing; inputs.id = "db"; };\n'
    late = '  members.late = { type = providers.p.thing; inputs = { id = "late"; port = PORT; }; };\n'
    checkout.deploy(deployment(declaration, db + late.replace("PORT", "5432")))
    checkout.ok("apply", "--yes", "-q")
    assert record(checkout, "late")["rank"] == record(checkout, "db")["rank"]
    calls = log.read_text()
    checkout.deploy(deployment(declaration, db + late.replace("PORT", "members.db.outputs.port")))
    done = checkout.ok("apply", "--yes")
    assert "now reads db, applied after it" in done.stdout
    after = record(checkout, "late")
    assert after["dependencies"] == ["db"] and int(after["rank"]) > int(record(checkout, "db")["rank"])  # type: ignore[call-overload]
    assert log.read_text() == calls  # no provider call at all (the provider logs every request it serves)
