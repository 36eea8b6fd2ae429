"""Sensitive values in memory and at rest, for every value: sealing round-trips (age and the keyed digest), plans show
a change without either value, redaction finds a value wherever it is quoted, nothing writes one by accident."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pyrage
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import sensitive
from controller.errors import SecretsError
from controller.model import DesiredResource, ResourceState
from controller.plan_render import plan_json, render_plan
from controller.planning import plan
from controller.sealing import Encryption, Sealer, fingerprint
from controller.sensitive import SEALED_KEY, Sensitive, Unavailable, redact

EXAMPLES = int(os.environ.get("NIXGITOPS_PROPERTY_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# secrets that cannot occur by chance in a plan's own text
secrets_ = st.text(alphabet="QXZqxz0123456789#%&", min_size=6, max_size=40).map(lambda s: "S3cr" + s)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
)


def sealer(tmp_path: Path, *, recipients: int = 1, identities: int = 1) -> Sealer:
    keys = [pyrage.x25519.Identity.generate() for _ in range(recipients)]
    files = []
    for n, key in enumerate(keys[:identities]):
        path = tmp_path / f"id{n}.txt"
        path.write_text(f"{key}\n")
        files.append(path)
    encryption = Encryption(recipients=tuple(str(k.to_public()) for k in keys), identity_files=tuple(files))
    return Sealer(encryption, key_file=tmp_path / "digest-key")


@SETTINGS
@given(value=json_values)
def test_a_sealed_value_opens_to_itself_and_compares_by_digest(tmp_path: Path, value: Any) -> None:
    seal = sealer(tmp_path)
    fresh = seal.wrap(value)
    stored = json.loads(json.dumps({"v": fresh}, default=seal.store))
    entry = stored["v"][SEALED_KEY]
    assert set(entry) == {"digest", "age", "to"} and entry["to"] == fingerprint(seal.encryption.recipients)
    revived = seal.revive(stored)["v"]
    assert isinstance(revived, Sensitive) and not revived.has_value
    assert revived == fresh  # by the keyed digest, nothing decrypted
    assert revived.reveal() == value and revived.has_value
    assert seal.wrap([value, "other"]) != revived
    # stored again unchanged: the very same bytes (no churn on the state branch)
    assert json.loads(json.dumps(revived, default=seal.store)) == stored["v"]


@SETTINGS
@given(value=json_values)
def test_without_recipients_only_a_keyed_digest_is_kept(tmp_path: Path, value: Any) -> None:
    seal = Sealer(Encryption(), key_file=tmp_path / "digest-key")
    stored = json.loads(json.dumps(seal.wrap(value), default=seal.store))
    assert set(stored[SEALED_KEY]) == {"digest"}
    revived = seal.revive(stored)
    assert revived == seal.wrap(value)
    with pytest.raises(Unavailable) as caught:
        revived.reveal()
    assert not caught.value.stored
    # another machine, another digest key: the value cannot be compared there, so it counts as changed
    elsewhere = Sealer(Encryption(), key_file=tmp_path / "other-key")
    assert elsewhere.wrap(value) != revived


def test_enforced_without_recipients_is_refused(tmp_path: Path) -> None:
    seal = Sealer(Encryption(enforced=True, where="`x` in conf"), key_file=tmp_path / "k")
    with pytest.raises(SecretsError, match="enforced"):
        seal.check()
    with pytest.raises(SecretsError, match="enforced"):
        json.dumps(seal.wrap("v"), default=seal.store)


def test_rekey_reaches_new_recipients_and_a_wrong_identity_is_a_clear_error(tmp_path: Path) -> None:
    old = sealer(tmp_path)
    stored = json.loads(json.dumps({"p": old.wrap("hunter22")}, default=old.store))
    new_key = pyrage.x25519.Identity.generate()
    (tmp_path / "new.txt").write_text(f"{new_key}\n")
    both = Encryption(
        recipients=(*old.encryption.recipients, str(new_key.to_public())), identity_files=old.encryption.identity_files
    )
    rekeyed = Sealer(both, key_file=tmp_path / "digest-key").rekey(old.revive(stored))
    written = json.loads(json.dumps(rekeyed, default=Sealer(both, key_file=tmp_path / "digest-key").store))
    reader = Sealer(
        Encryption(recipients=both.recipients, identity_files=(tmp_path / "new.txt",)), key_file=tmp_path / "k"
    )
    assert reader.revive(written)["p"].reveal() == "hunter22"
    stranger = tmp_path / "stranger.txt"
    stranger.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    wrong = Sealer(Encryption(identity_files=(stranger,)), key_file=tmp_path / "k")
    with pytest.raises(SecretsError, match=r"Cannot decrypt.*stranger\.txt"):
        wrong.revive(stored)["p"].reveal()
    nobody = Sealer(Encryption(identity_hint="pass --identity FILE"), key_file=tmp_path / "k")
    with pytest.raises(Unavailable, match="--identity"):
        nobody.revive(stored)["p"].reveal()


def test_a_sensitive_value_is_never_written_by_accident() -> None:
    value = sensitive.Sensitive("hunter22", digest="d")
    with pytest.raises(TypeError):
        json.dumps({"x": value})
    assert f"{value} {value!r} {value:>12}".split() == ["(sensitive)", "(sensitive)", "(sensitive)"]
    with pytest.raises(TypeError):
        __import__("pickle").dumps(value)


@SETTINGS
@given(secret=secrets_, nested=st.booleans(), before=secrets_)
def test_plans_show_a_change_and_never_the_value(tmp_path: Path, secret: str, nested: bool, before: str) -> None:
    seal = Sealer(Encryption(), key_file=tmp_path / "digest-key")
    value: Any = {"env": {"PASSWORD": seal.wrap(secret), "USER": "app"}} if nested else {"password": seal.wrap(secret)}
    old = {"env": {"PASSWORD": seal.wrap(before), "USER": "app"}} if nested else {"password": seal.wrap(before)}
    desired = {"db": DesiredResource("db", "vault.db", value), "new": DesiredResource("new", "vault.db", value)}
    state = {"db": ResourceState("db", "vault.db", old, {"password": seal.wrap(before)})}
    planned = plan(desired, state)
    text = render_plan(planned)
    document = json.dumps(plan_json(planned, deployment="d", source_commit=None, dependencies={}))
    for shown in (text, document):
        assert secret not in shown and before not in shown
    assert "(sensitive)" in text and "(sensitive)" in document
    changed = planned.by_path()["db"]
    assert changed.action.value == ("update" if secret != before else "noop")
    if secret != before:
        assert "a sensitive value changed" in text
        assert any(f.get("sensitive") for c in json.loads(document)["changes"] for f in c["fields"])


@SETTINGS
@given(secret=secrets_, around=st.text(max_size=30))
def test_redaction_finds_a_value_however_it_is_quoted(secret: str, around: str) -> None:
    sensitive.remember(secret)
    for text in (around + secret + around, json.dumps({"k": around + secret}), repr(secret) + around):
        assert secret not in redact(text)
    assert "(sensitive)" in redact(secret)


def test_short_values_are_masked_but_not_searched_for() -> None:
    sensitive.remember("on")
    assert redact("turn it on") == "turn it on"
    assert json.dumps(sensitive.masked({"flag": Sensitive("on", digest="d")})) == '{"flag": "(sensitive)"}'


def test_a_reader_without_recipients_keeps_the_ciphertext(tmp_path: Path) -> None:
    """A checkout without .nixgitops/recipients reads state sealed by the controller: its cache, and the records it
    writes again unchanged, keep the ciphertext (found by make demo: `state show` then `--show-sensitive`)."""
    writer = sealer(tmp_path)
    stored = json.loads(json.dumps(writer.wrap("kept-secret"), default=writer.store))
    reader = Sealer(Encryption(identity_files=writer.encryption.identity_files), key_file=tmp_path / "digest-key")
    again = json.loads(json.dumps(reader.revive(stored), default=reader.store))
    assert again == stored
    assert reader.revive(again).reveal() == "kept-secret"


def test_the_digest_key_is_the_one_that_digested_state_and_heals_the_shared_copy(tmp_path: Path) -> None:
    """Machine A digested state with its key; another machine sealed a different key into deployment.json (a rekey
    without A's key). A keeps using its own key (the one state was digested with) and writes the shared copy
    again; its old local key is never lost."""
    seal_a = sealer(tmp_path)
    stored = json.loads(json.dumps(seal_a.wrap("v-secret"), default=seal_a.store))
    other = Sealer(seal_a.encryption, key_file=tmp_path / "other-key")
    other.digest_key()
    wrong = other.meta_entry()
    assert wrong is not None
    reader = Sealer(seal_a.encryption, key_file=tmp_path / "digest-key", meta=lambda: {"digestKey": wrong})
    reader.revive(stored)
    reader.check_digests()  # (no refusal: the local key digested what state holds)
    assert reader.digest_key() == (tmp_path / "digest-key").read_bytes()
    healed = reader.meta_entry()
    assert healed is not None and healed["id"] != wrong["id"]
    # a machine with only the wrong shared key refuses, and says why
    stranger = Sealer(seal_a.encryption, key_file=tmp_path / "fresh-key", meta=lambda: {"digestKey": wrong})
    stranger.revive(stored)
    with pytest.raises(SecretsError, match="digested with a key this machine does not have"):
        stranger.check_digests()
    assert not (tmp_path / "digest-key").with_name("digest-key.tmp").exists()


def test_a_digest_key_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "digest-key").write_bytes(b"")
    with pytest.raises(SecretsError, match="not a digest key"):
        Sealer(Encryption(), key_file=tmp_path / "digest-key").wrap("value")


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_ssh_keys_are_recipients_and_identities_as_agenix_takes_them(tmp_path: Path, kind: str) -> None:
    key = tmp_path / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "ops", "-f", str(key)], check=True)
    public = key.with_suffix(".pub").read_text().strip()
    seal = Sealer(Encryption(recipients=(public,), identity_files=(key,)), key_file=tmp_path / "digest-key")
    stored = json.loads(json.dumps({"v": seal.wrap({"user": "app", "password": "ssh-sealed"})}, default=seal.store))
    assert seal.revive(stored)["v"].reveal() == {"user": "app", "password": "ssh-sealed"}
    locked = tmp_path / f"locked_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "a passphrase", "-f", str(locked)], check=True)
    with pytest.raises(SecretsError, match="without a passphrase"):
        Sealer(Encryption(identity_files=(locked,)), key_file=tmp_path / "k").revive(stored)["v"].reveal()
