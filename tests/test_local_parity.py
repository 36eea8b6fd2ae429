"""Our ``local`` provider and NixOps4's, given the same requests, answer the same.

"NixOps4" is what a NixOps4 deployment gets: its option module (``providers/local.nix`` in ../shared/reference,
evaluated with nixpkgs' lib by the real ``nix-instantiate``: the defaults, the type checks, the coercion of
``exec.args``) and then its real provider binary, ``nixops4-resources-local``. Ours gets the inputs as a
deployment.nix writes them, since nixgitops has no module system: the provider does what the module does. Each
side runs as one real process in a directory of its own, so a relative ``name`` means the same file to both.

Where they differ on purpose (docs/deployment-language.md, "The built-in `local` provider"), a test says so:
NixOps4 never updates a ``file`` or a ``state_file`` (it makes them again on every deployment), so our update is
compared with its create; its module cannot turn an integer in ``args`` into a string ("cannot coerce an integer
to a string"), so ours is compared with what Nix's ``toString`` makes of it; and delete and read are ours alone.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REFERENCE, ROOT, Checkout, nixops4_local
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import protocol
from controller.errors import ProviderError
from controller.evaluation import local_provider_spec
from controller.local_provider import PATCH_FIELDS
from controller.model import ProviderSpec
from controller.provider_client import Providers

LOCAL_NIX = REFERENCE / "nixops4" / "nix" / "providers" / "local.nix"
NIXPKGS_LIB = REFERENCE / "nixpkgs-lib" / "lib"
EXAMPLES = int(os.environ.get("NIXGITOPS_PROPERTY_EXAMPLES", "30"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TIMEOUT = 30  # seconds for any one request, and for any one evaluation of NixOps4's module

# NixOps4's option module for one resource type's inputs, as NixOps4 evaluates it: the inputs its provider gets.
# With toStringInts, integers in args are first made strings by Nix's toString (what the module's type declares
# they become, and cannot do itself).
MODULE = """
{ case, lib, local }:
let
  c = builtins.fromJSON case;
  nixlib = import (/. + lib);
  module = import (/. + local) { withSystem = throw "unused"; } {
    lib = nixlib;
    resourceProviderSystem = builtins.currentSystem;
    withSystem = _: throw "unused";
  };
  given = c.inputs // nixlib.optionalAttrs (c.toStringInts && builtins.isList (c.inputs.args or null)) {
    args = map (a: if builtins.isInt a then toString a else a) c.inputs.args;
  };
  evaluated = nixlib.evalModules { modules = [ module.resourceTypes.${c.type}.inputs { config = given; } ]; };
in
removeAttrs evaluated.config [ "_module" ]
"""


@functools.cache
def _module(case: str) -> tuple[dict[str, Any] | None, str]:
    if shutil.which("nix-instantiate") is None:
        pytest.skip("nix-instantiate is not installed (make setup installs it)")
    if not LOCAL_NIX.is_file() or not (NIXPKGS_LIB / "default.nix").is_file():
        pytest.skip(f"NixOps4's local.nix or nixpkgs-lib is not in {REFERENCE} (CI has ../shared beside the clone)")
    argv = ["nix-instantiate", "--eval", "--strict", "--json", "-E", MODULE, "--argstr", "case", case]
    argv += ["--argstr", "lib", str(NIXPKGS_LIB), "--argstr", "local", str(LOCAL_NIX)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    return (json.loads(done.stdout), "") if done.returncode == 0 else (None, done.stderr)


def nixops4_module(rtype: str, inputs: Mapping[str, Any], *, to_string_ints: bool = False) -> dict[str, Any] | None:
    """The inputs NixOps4's provider gets for ``inputs``, or None where its evaluation refuses them."""
    return _module(json.dumps({"type": rtype, "inputs": inputs, "toStringInts": to_string_ints}, sort_keys=True))[0]


Answer = tuple[bool, Any]
"""(True, the response body) or (False, the error message)."""


@dataclass
class Side:
    providers: Providers
    name: str
    dir: Path

    def send(self, message: dict[str, Any]) -> Answer:
        try:
            return True, self.providers.call(self.name, message, what=protocol.kind_of(message))
        except ProviderError as exc:
            assert not exc.fatal, f"{self.name} broke the protocol or died: {exc}"
            return False, str(exc)


@dataclass
class Both:
    ours: Side
    theirs: Side
    names: Iterator[int]

    def fresh(self, stem: str) -> str:
        """A file name not used yet in this module, relative: the same in both directories."""
        return f"{stem}{next(self.names)}"

    def create(
        self, rtype: str, inputs: dict[str, Any], *, stateful: bool = True, to_string_ints: bool = False
    ) -> Answer:
        """Ours answers as NixOps4 does (refusing what its module refuses); returns the answer."""
        request = protocol.create_request(rtype, inputs, is_stateful=stateful)
        ours = self.ours.send(request)
        given = nixops4_module(rtype, inputs, to_string_ints=to_string_ints)
        theirs = (False, "refused by its module") if given is None else self.theirs.send(_create(request, given))
        return same(ours, theirs)

    def update(self, rtype: str, old: dict[str, Any], outputs: dict[str, Any], new: dict[str, Any]) -> Answer:
        """Ours answers an update as NixOps4 does (which updates only stateful types: exec and memo)."""
        ours = self.ours.send(protocol.update_request(rtype, old, outputs, new))
        given_old = nixops4_module(rtype, old, to_string_ints=True)
        given_new = nixops4_module(rtype, new, to_string_ints=True)
        assert given_old is not None, "the old inputs were applied, so its module accepts them"
        if given_new is None:
            return same(ours, (False, "refused by its module"))
        return same(ours, self.theirs.send(protocol.update_request(rtype, given_old, outputs, given_new)))


def _create(request: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    body = request[protocol.CREATE]
    return {protocol.CREATE: {**body, "inputProperties": inputs}}


def same(ours: Answer, theirs: Answer) -> Answer:
    assert ours[0] == theirs[0], f"ours {'answered' if ours[0] else 'refused'}: {ours[1]}\nNixOps4's: {theirs[1]}"
    if ours[0]:
        assert ours[1] == theirs[1]
    return ours


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Both]:
    binary = nixops4_local()
    ours_dir, theirs_dir = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("nixops4")
    theirs_spec = ProviderSpec("nixops4", str(binary), (), frozenset({"file", "exec", "memo", "state_file"}))
    with (
        Providers({"local": local_provider_spec()}, size=1, timeout=TIMEOUT, cwd=str(ours_dir)) as ours,
        Providers({"nixops4": theirs_spec}, size=1, timeout=TIMEOUT, cwd=str(theirs_dir)) as theirs,
    ):
        yield Both(Side(ours, "local", ours_dir), Side(theirs, "nixops4", theirs_dir), itertools.count())


def file_in(side: Side, name: str) -> tuple[bytes, int] | None:
    path = side.dir / name
    return (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) if path.exists() else None


def seen(side: Side, rtype: str, name: str) -> tuple[bytes, int] | None:
    """The file as ``file_in`` shows it; a state file without the time of its first event."""
    found = file_in(side, name)
    if rtype != "state_file" or found is None:
        return found
    return _without_time(found[0])[1].encode(), found[1]


# ---- inputs: accepted and refused alike ----------------------------------------------------------------------------

NAME = "@name"
"""In a case, stands for a file name not used yet."""
INPUT_CASES = [
    ("file", {"name": NAME, "contents": "hi"}),
    ("file", {"name": NAME, "contents": "hi", "bogus": 1}),
    ("file", {"name": NAME, "contents": 1}),
    ("file", {"name": NAME}),
    ("file", {"contents": "hi"}),
    ("file", {"name": 1, "contents": "hi"}),
    ("exec", {"executable": "echo"}),  # args, stdin and once default
    ("exec", {"executable": "echo", "args": ["a", "b c"]}),
    ("exec", {"executable": "cat", "args": [], "stdin": "in\nput"}),
    ("exec", {"executable": "cat", "stdin": None, "once": False}),
    ("exec", {"executable": "cat", "stdin": 1}),
    ("exec", {"executable": "echo", "once": None}),
    ("exec", {"executable": "echo", "once": "yes"}),
    ("exec", {"executable": "echo", "args": [1.5]}),
    ("exec", {"executable": "echo", "args": [True]}),
    ("exec", {"executable": "echo", "args": [["a"]]}),
    ("exec", {"executable": "echo", "args": [None]}),
    ("exec", {"executable": "echo", "args": "a"}),
    ("exec", {"executable": "echo", "bogus": 1}),
    ("exec", {"executable": 1}),
    ("exec", {"args": ["a"]}),
    ("exec", {"executable": "false"}),
    ("exec", {"executable": "/nonexistent/command"}),
    ("memo", {"initialize_with": {"a": [1, 2.5, None, "x"]}}),
    ("memo", {"initialize_with": None}),
    ("memo", {}),
    ("memo", {"initialize_with": 1, "bogus": 2}),
    ("state_file", {"name": NAME}),
    ("state_file", {"name": NAME, "bogus": 1}),
    ("state_file", {"name": 1}),
    ("state_file", {}),
]


@pytest.mark.parametrize(("rtype", "inputs"), INPUT_CASES, ids=[f"{t}-{json.dumps(i)}" for t, i in INPUT_CASES])
def test_inputs_are_accepted_and_refused_as_nixops4s_module_and_provider_do(
    both: Both, rtype: str, inputs: dict[str, Any]
) -> None:
    if inputs.get("name") == NAME:
        inputs = {**inputs, "name": both.fresh(rtype)}
    both.create(rtype, inputs)
    if isinstance(inputs.get("name"), str):
        assert seen(both.ours, rtype, inputs["name"]) == seen(both.theirs, rtype, inputs["name"])


def test_an_unknown_resource_type_is_refused_by_both(both: Both) -> None:
    request = protocol.create_request("bogus", {})
    same(both.ours.send(request), both.theirs.send(request))


# ---- exec ----------------------------------------------------------------------------------------------------------

SHOW = ["-c", 'printf "[%s]" "$@"; printf "<"; cat; printf ">"', "sh"]
"""``sh`` with these arguments prints the arguments after them and its stdin."""
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)  # as in Nix
int64 = st.integers(-(2**63), 2**63 - 1)
exec_inputs = st.fixed_dictionaries(
    {"args": st.lists(text | int64, max_size=4), "once": st.booleans(), "stdin": st.none() | text}
).map(lambda i: {"executable": "sh", **i, "args": [*SHOW, *i["args"]]})


@PROPERTY
@given(first=exec_inputs, then=exec_inputs)
def test_exec_runs_as_nixops4s_and_with_once_keeps_its_first_output(
    both: Both, first: dict[str, Any], then: dict[str, Any]
) -> None:
    created = both.create("exec", first, to_string_ints=True)
    assert created[0], created[1]
    outputs = created[1]["outputProperties"]
    updated = both.update("exec", first, outputs, then)
    assert updated[0], updated[1]
    if then["once"]:
        assert updated[1]["outputProperties"] == outputs, "once: the update keeps the output and runs nothing"


def test_nixops4s_module_cannot_make_an_int_arg_a_string_so_ours_does_what_its_type_declares(both: Both) -> None:
    inputs = {"executable": "echo", "args": ["n", 42, -7, 2**63 - 1]}
    assert nixops4_module("exec", inputs) is None
    stderr = _module(json.dumps({"type": "exec", "inputs": inputs, "toStringInts": False}, sort_keys=True))[1]
    assert "cannot coerce an integer to a string" in stderr
    created = both.create("exec", inputs, to_string_ints=True)
    assert created[1] == {"outputProperties": {"stdout": f"n 42 -7 {2**63 - 1}\n"}}


EXEC = {"executable": "echo", "args": ["x"], "stdin": None}


@pytest.mark.parametrize(
    ("old", "outputs", "new"),
    [
        ({**EXEC, "once": True}, {"stdout": "OLD"}, {**EXEC, "args": ["y"], "once": True}),
        ({**EXEC, "once": False}, {"stdout": "OLD"}, {**EXEC, "args": ["y"], "once": True}),  # the new once counts
        ({**EXEC, "once": True}, {"stdout": "OLD"}, {**EXEC, "args": ["y"], "once": False}),
        ({**EXEC, "once": True}, {"stdout": "OLD", "extra": 1}, {**EXEC, "once": True}),
        ({**EXEC, "once": True}, {}, {**EXEC, "once": True}),
        ({**EXEC, "once": True}, {"stdout": 1}, {**EXEC, "once": True}),
        ({**EXEC, "once": True}, {"stdout": "OLD"}, {**EXEC, "once": True, "bogus": 1}),
        ({"initialize_with": 1}, {"value": 1}, {"initialize_with": 2}),
        ({"initialize_with": 1}, {"value": None}, {"initialize_with": 2}),
        ({"initialize_with": 1}, {"value": 1, "extra": 2}, {"initialize_with": 2}),
        ({"initialize_with": 1}, {}, {"initialize_with": 2}),
        ({"initialize_with": 1}, {"value": 1}, {}),
    ],
)
def test_an_update_keeps_or_needs_the_previous_output_as_nixops4s_does(
    both: Both, old: dict[str, Any], outputs: dict[str, Any], new: dict[str, Any]
) -> None:
    both.update("exec" if "executable" in old else "memo", old, outputs, new)


def test_an_update_without_any_previous_outputs_is_refused_by_both(both: Both) -> None:
    for rtype, inputs in (("exec", {**EXEC, "once": True}), ("memo", {"initialize_with": 1})):
        request = {protocol.UPDATE: {"resource": {"type": rtype, "inputProperties": inputs}, "inputProperties": inputs}}
        assert same(both.ours.send(request), both.theirs.send(request))[0] is False


@pytest.mark.parametrize(
    ("rtype", "inputs"),
    [("memo", {"initialize_with": 1}), ("exec", {**EXEC, "once": True}), ("exec", {**EXEC, "once": False})],
)
def test_memo_and_exec_once_need_state_as_in_nixops4(both: Both, rtype: str, inputs: dict[str, Any]) -> None:
    answer = both.create(rtype, inputs, stateful=False)
    assert answer[0] is (rtype == "exec" and not inputs["once"])


# ---- memo ----------------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@PROPERTY
@given(first=json_values, then=json_values)
def test_a_memo_keeps_its_first_value_as_nixops4s_does(both: Both, first: Any, then: Any) -> None:
    # The module's type is `anything`: values pass through it unchanged, so both get them as they are.
    for request in (
        protocol.create_request("memo", {"initialize_with": first}),
        protocol.update_request("memo", {"initialize_with": first}, {"value": first}, {"initialize_with": then}),
    ):
        ours, theirs = both.ours.send(request), both.theirs.send(request)
        assert ours == (True, {"outputProperties": {"value": first}})
        assert theirs[0], theirs[1]
        assert close(theirs[1]["outputProperties"]["value"], first)


def close(theirs: Any, ours: Any) -> bool:
    """Equal, but for the last digit of a float: NixOps4's JSON parser does not always round a float's decimal
    digits to the nearest double (serde_json without its float_roundtrip feature); ours keeps every float exact."""
    if isinstance(ours, float) and isinstance(theirs, float):
        return math.isclose(theirs, ours, rel_tol=4e-16, abs_tol=0)
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(close, theirs, ours))
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(close(theirs[k], ours[k]) for k in ours)
    return type(theirs) is type(ours) and theirs == ours


# ---- file ----------------------------------------------------------------------------------------------------------


@PROPERTY
@given(first=st.text(), then=st.text())
def test_a_file_is_written_as_nixops4s_and_written_again_on_update(both: Both, first: str, then: str) -> None:
    # The module's types are `str`: strings pass through it unchanged, so both get them as they are.
    name = both.fresh("file")
    request = protocol.create_request("file", {"name": name, "contents": first})
    assert same(both.ours.send(request), both.theirs.send(request)) == (True, {"outputProperties": {}})
    written = file_in(both.ours, name)
    assert written == file_in(both.theirs, name), "the same bytes and the same mode"
    assert written is not None and written[0] == first.encode()
    # NixOps4 makes a file again on every deployment (it never updates one): our update does the same to it.
    ours = both.ours.send(
        protocol.update_request("file", {"name": name, "contents": first}, {}, {"name": name, "contents": then})
    )
    same(ours, both.theirs.send(protocol.create_request("file", {"name": name, "contents": then})))
    assert file_in(both.ours, name) == file_in(both.theirs, name)


def test_a_file_keeps_its_mode_and_is_written_through_a_symlink_as_nixops4s(both: Both) -> None:
    name = both.fresh("mode")
    for side in (both.ours, both.theirs):
        (side.dir / f"{name}.target").write_text("old")
        (side.dir / f"{name}.target").chmod(0o600)
        (side.dir / name).symlink_to(f"{name}.target")
    both.create("file", {"name": name, "contents": "new"})
    for side in (both.ours, both.theirs):
        assert (side.dir / name).is_symlink()
    assert file_in(both.ours, f"{name}.target") == file_in(both.theirs, f"{name}.target") == (b"new", 0o600)


# ---- state_file ----------------------------------------------------------------------------------------------------


def _without_time(data: bytes) -> tuple[str, str]:
    event = json.loads(data)
    stamp = event["meta"].pop("time")
    return stamp, data.decode().replace(json.dumps(stamp), '"TIME"')


def test_a_state_file_is_started_as_nixops4s_and_then_left_alone(both: Both) -> None:
    name = both.fresh("state")
    assert both.create("state_file", {"name": name}) == (True, {"outputProperties": {}})
    ours, theirs = file_in(both.ours, name), file_in(both.theirs, name)
    assert ours is not None and theirs is not None
    (our_time, our_text), (their_time, their_text) = _without_time(ours[0]), _without_time(theirs[0])
    assert our_text == their_text, "the same bytes, but for the time"
    assert ours[1] == theirs[1]
    rfc3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?\+00:00"  # as chrono writes it
    assert re.fullmatch(rfc3339, our_time), our_time
    assert re.fullmatch(rfc3339, their_time), their_time
    # Again (NixOps4 on its next deployment; nixgitops repeating a create): the file is checked and left alone.
    assert both.create("state_file", {"name": name}) == (True, {"outputProperties": {}})
    assert file_in(both.ours, name) == ours and file_in(both.theirs, name) == theirs
    # Our update to a new name starts the new one as NixOps4's create does, and keeps the old one.
    moved = both.fresh("state")
    answer = both.ours.send(protocol.update_request("state_file", {"name": name}, {}, {"name": moved}))
    same(answer, both.theirs.send(protocol.create_request("state_file", {"name": moved})))
    assert file_in(both.ours, name) == ours
    assert _without_time(file_in(both.ours, moved)[0])[1] == _without_time(file_in(both.theirs, moved)[0])[1]


STATE_FILES = [
    '{"index":0,"meta":{"time":"x"},"patch":[]}',
    '{"index":0,"meta":{"time":"x"},"patch":[]} garbage after the first event',
    '{"index":0,"meta":{"time":"x"},"patch":[]}{"index":5}',
    ' \n\t{"index":0,"meta":{"time":"x","extra":1},"patch":[],"extra":2}',
    '{"index":1,"meta":{"time":"x"},"patch":[]}',
    '{"index":-1,"meta":{"time":"x"},"patch":[]}',
    '{"index":0.0,"meta":{"time":"x"},"patch":[]}',
    '{"index":"0","meta":{"time":"x"},"patch":[]}',
    '{"index":true,"meta":{"time":"x"},"patch":[]}',
    '{"index":18446744073709551616,"meta":{"time":"x"},"patch":[]}',
    '{"index":0,"meta":{"time":1},"patch":[]}',
    '{"index":0,"meta":{},"patch":[]}',
    '{"index":0,"meta":null,"patch":[]}',
    '{"index":0,"patch":[]}',
    '{"index":0,"meta":{"time":"x"}}',
    '{"index":0,"meta":{"time":"x"},"patch":{}}',
    '{"index":0,"meta":{"time":"x"},"patch":[],"index":1}',
    '{"index":0,"meta":{"time":"x","time":"y"},"patch":[]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"add","path":"/a","value":1,"op":"remove"}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"add","path":"/a","value":null}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"add","path":"/a"}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"remove","path":"/a","x":1}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"move","from":"/b","path":"/a"}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"move","path":"/a"}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"copy","from":"b","path":"/a"}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"test","path":"/a","value":3}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"bogus","path":"/a"}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"ADD","path":"/a","value":1}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"path":"/a","value":1}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"add","path":1,"value":1}]}',
    *(
        f'{{"index":0,"meta":{{"time":"x"}},"patch":[{{"op":"add","path":{json.dumps(p)},"value":1}}]}}'
        for p in ("", "/", "abc", "/a~", "/a~2", "/a~01", "/a~1b/~0", "~0")
    ),
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"add","path":"/a","value":[1e400]}]}',
    '{"index":0,"meta":{"time":"x"},"patch":[{"op":"add","path":"/a","value":NaN}]}',
    "\ufeff" + '{"index":0,"meta":{"time":"x"},"patch":[]}',
    "[]",
    "",
    " \n",
    "{",
]


def existing_state_file(both: Both, content: str) -> None:
    """Both accept a state file holding ``content``, or both refuse it; either way they leave it as it was."""
    name = both.fresh("existing")
    for side in (both.ours, both.theirs):
        (side.dir / name).write_bytes(content.encode())
    both.create("state_file", {"name": name})
    assert file_in(both.ours, name) == file_in(both.theirs, name) == (content.encode(), 0o644)


@pytest.mark.parametrize("content", STATE_FILES)
def test_an_existing_state_file_is_accepted_exactly_when_nixops4_accepts_it(both: Both, content: str) -> None:
    existing_state_file(both, content)


pointers = st.sampled_from(["", "/", "/a", "/a/0", "/a~0b", "/a~1", "a", "/a~", "/a~2"]) | st.text("/~01a", max_size=5)
scalars = st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from(["0", "x", 0.0, 2**64])


@st.composite
def mutated(draw: st.DrawFn, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as it is, most often; else with a field dropped, a field replaced by a scalar, or a field added."""
    how = draw(st.sampled_from(["as it is"] * 4 + ["drop", "replace", "add"]))
    obj = dict(obj)
    if how == "drop" and obj:
        del obj[draw(st.sampled_from(sorted(obj)))]
    elif how == "replace" and obj:
        obj[draw(st.sampled_from(sorted(obj)))] = draw(scalars)
    elif how == "add":
        obj[draw(st.text(max_size=5))] = draw(scalars)
    return obj


@st.composite
def operations(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from([*PATCH_FIELDS, "ADD", "bogus"]))
    fields = {name: draw(scalars if name == "value" else pointers) for name in PATCH_FIELDS.get(op, ("path",))}
    return draw(mutated({"op": op, **fields}))


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A first event of a state file: valid as often as not, else wrong in one or two places."""
    index = draw(st.sampled_from([0] * 12 + [1, -1, 0.0, "0", True, 2**64]))
    meta = draw(mutated({"time": draw(text)}))
    return draw(mutated({"index": index, "meta": meta, "patch": draw(st.lists(operations(), max_size=3))}))


# Not generated: an event written as a JSON array ([0, {"time": "x"}, []]), which NixOps4's decoder happens to
# accept as a struct and no state file holds.


@PROPERTY
@given(
    event=events(), before=st.sampled_from(["", " \n"]), after=st.sampled_from(["", "\n", '\n{"index":5}', " x", "{"])
)
def test_generated_state_files_are_accepted_exactly_when_nixops4_accepts_them(
    both: Both, event: dict[str, Any], before: str, after: str
) -> None:
    existing_state_file(both, before + json.dumps(event) + after)


# ---- what only ours does: delete and read, and a deployment's paths and numbers ----------------------------------


def ours(both: Both, message: dict[str, Any]) -> Any:
    answer = both.ours.send(message)
    assert answer[0], answer[1]
    return answer[1]


def test_delete_removes_a_file_and_leaves_a_state_file(both: Both) -> None:
    name, state = both.fresh("gone"), both.fresh("kept")
    ours(both, protocol.create_request("file", {"name": name, "contents": "x"}))
    ours(both, protocol.create_request("state_file", {"name": state}))
    ours(both, protocol.destroy_request("file", {"name": name, "contents": "x"}, {}))
    ours(both, protocol.destroy_request("state_file", {"name": state}, {}))
    ours(both, protocol.destroy_request("exec", {**EXEC, "once": True}, {"stdout": "x\n"}))
    ours(both, protocol.destroy_request("memo", {"initialize_with": 1}, {"value": 1}))
    assert not (both.ours.dir / name).exists()
    assert (both.ours.dir / state).exists(), "it may hold another tool's state"


def test_read_reports_what_it_can_look_at(both: Both) -> None:
    name, state = both.fresh("read"), both.fresh("readstate")
    ours(both, protocol.create_request("file", {"name": name, "contents": "x"}))
    ours(both, protocol.create_request("state_file", {"name": state}))

    def read(rtype: str, inputs: dict[str, Any], outputs: dict[str, Any] | None) -> Answer:
        resource: dict[str, Any] = {"type": rtype, "inputProperties": inputs}
        if outputs is not None:
            resource["outputProperties"] = outputs
        return both.ours.send({protocol.READ: {"resource": resource}})

    assert read("file", {"name": name, "contents": "x"}, {}) == (True, {"outputProperties": {}, "inSync": True})
    assert read("file", {"name": name, "contents": "y"}, {})[1]["inSync"] is False
    assert read("state_file", {"name": state}, {}) == (True, {"outputProperties": {}, "inSync": True})
    assert read("state_file", {"name": name}, {})[1]["inSync"] is False, "not a state file"
    assert read("state_file", {"name": both.fresh("none")}, {})[1]["inSync"] is False, "gone"
    once = {**EXEC, "once": True}
    assert read("exec", once, {"stdout": "x\n"}) == (True, {"outputProperties": {"stdout": "x\n"}, "inSync": True})
    assert read("exec", once, None)[0] is False, "a create that may not have happened: cannot tell"
    assert read("exec", {**EXEC, "once": False}, {"stdout": "x\n"})[0] is False, "cannot tell without running it"
    assert read("memo", {"initialize_with": 2}, {"value": 1}) == (
        True,
        {"outputProperties": {"value": 1}, "inSync": True},
    )
    assert read("memo", {"initialize_with": 2}, None)[0] is False


def test_requests_it_cannot_carry_out_are_refused_and_it_keeps_serving(tmp_path: Path) -> None:
    lines = [
        protocol.encode(protocol.create_request("exec", {"executable": "echo", "args": ["a\0b"]})),
        # a lone surrogate is not text: the line is JSON, as ensure_ascii writes it, but no string can be written
        json.dumps(protocol.create_request("memo", {"initialize_with": "\ud800"})).encode() + b"\n",
        json.dumps(protocol.create_request("file", {"name": "\ud800", "contents": ""})).encode() + b"\n",
        b"not json\n",
        protocol.encode(protocol.create_request("memo", {"initialize_with": 1})),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "controller.local_provider"],
        input=b"".join(lines),
        capture_output=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [next(iter(a)) for a in answers] == [protocol.ERROR] * 4 + ["createResourceResponse"]
    assert answers[-1]["createResourceResponse"] == {"outputProperties": {"value": 1}}


def test_a_deployment_gives_exec_a_path_as_its_absolute_path_and_numbers_as_decimals(checkout: Checkout) -> None:
    (checkout.path / "deploy").mkdir()
    (checkout.path / "deploy" / "show.sh").write_text('printf "%s\\n" "$0" "$@"\n')
    deployment = """
        {{ providers, ... }}:
        {{
          members.show = {{
            type = providers.local.exec;
            inputs = {{ executable = "sh"; args = [ ./deploy/show.sh 42 (-7) "{word}" ]; once = true; }};
          }};
        }}
        """
    checkout.deploy(deployment.format(word="first"))
    checkout.ok("apply", "--yes")
    # NixOps4 would copy the file into the store ("${./deploy/show.sh}"): nixgitops passes its absolute path.
    shown = f"{checkout.path / 'deploy' / 'show.sh'}\n42\n-7\nfirst\n"
    assert checkout.state()["show"]["outputs"] == {"stdout": shown}
    checkout.deploy(deployment.format(word="then"))
    assert checkout.plan()["show"]["action"] == "update"
    checkout.ok("apply", "--yes")
    record = checkout.state()["show"]
    assert record["outputs"] == {"stdout": shown}, "once: the update ran nothing and kept the first output"
    assert record["inputs"]["args"][-1] == "then"


def test_a_deployment_starts_a_state_file_and_leaves_it_on_delete(checkout: Checkout) -> None:
    checkout.deploy(
        '{ providers, ... }: { members.state = { type = providers.local.state_file; inputs.name = "state.json"; }; }'
    )
    checkout.ok("apply", "--yes")
    started = (checkout.path / "state.json").read_text()
    assert json.loads(started)["patch"][0]["value"] == {"_type": "nixopsState", "deployments": {}, "resources": {}}
    checkout.deploy("{ ... }: { members = { }; }")
    checkout.ok("apply", "--yes", "--allow-empty")
    assert checkout.state() == {}
    assert (checkout.path / "state.json").read_text() == started
