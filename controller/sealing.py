"""Sealing: how sensitive values are kept at rest, the one place that speaks to age (through pyrage).

Each sensitive value in a state record or a journal line is written as ``{"__nixgitopsSealed": {...}}`` with

* ``digest``: HMAC-SHA256 of the value under the deployment's *digest key* (``hmac-sha256:<key id>:<hex>``):
  enough to tell a change, useless without the key (which is never on the state branch in clear);
* ``age`` and ``to``: when recipients are configured, the value encrypted with age to every recipient (X25519
  ``age1...`` keys, SSH ed25519 and RSA public keys, as agenix takes them), and a fingerprint of the recipients.

The digest key lives next to the journal (``<journal>.digest-key``, mode 0600). With recipients it is also kept
on the state branch, encrypted to them (``deployment.json`` ``digestKey``), so that any machine holding an identity
finds it. See docs/secrets.md for the threat model.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyrage

from controller.errors import SecretsError
from controller.sensitive import SEALED_KEY, Sensitive, Unavailable, canonical

RECIPIENTS_FILE = ".nixgitops/recipients"


@dataclass(frozen=True)
class Encryption:
    """A deployment's encryption settings (``[deployments.NAME.encryption]``, or the command line's
    ``.nixgitops/recipients`` and ``--identity``)."""

    recipients: tuple[str, ...] = ()
    identity_files: tuple[Path, ...] = ()
    enforced: bool = False
    where: str = "the configuration"
    """Where the recipients come from, for messages."""
    identity_hint: str = "set identity_file in [deployments.NAME.encryption]"
    """How to give an identity, for messages."""


def parse_recipient(text: str, where: str) -> Any:
    """One recipient: ``age1...``, ``ssh-ed25519 ...`` or ``ssh-rsa ...``; raises ``SecretsError``."""
    text = text.strip()
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return pyrage.ssh.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise SecretsError(f"{where}: the recipient {_short(text)!r} is not a valid public key ({exc}).") from None
    raise SecretsError(
        f"{where}: {_short(text)!r} is not a recipient nixgitops knows: give an age public key (age1...) or an SSH"
        " public key (ssh-ed25519 ... or ssh-rsa ..., a line of ~/.ssh/id_ed25519.pub)."
    )


def read_recipients_file(path: Path) -> tuple[str, ...]:
    """Recipients one per line; blank lines and ``#`` comments are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))


def load_identities(files: Sequence[Path]) -> list[Any]:
    """The identities in ``files``: age identity files (``AGE-SECRET-KEY-1...`` lines) or unencrypted SSH private
    keys (ed25519, RSA). Raises ``SecretsError`` naming the file and what to do."""
    found: list[Any] = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SecretsError(f"Cannot read the identity file {path}: {exc.strerror}.") from None
        text = data.decode("utf-8", errors="replace")
        if "PRIVATE KEY-----" in text:
            try:
                found.append(pyrage.ssh.Identity.from_buffer(data))
            except pyrage.IdentityError as exc:
                hint = (
                    " Give a key without a passphrase (age cannot ask for one here)." if "decrypt" in str(exc) else ""
                )
                raise SecretsError(
                    f"The identity file {path} holds an SSH key nixgitops cannot use: {exc}.{hint}"
                ) from None
            continue
        keys = [line.strip() for line in text.splitlines() if line.strip().startswith("AGE-SECRET-KEY-")]
        if not keys:
            raise SecretsError(
                f"The identity file {path} holds no identity: give an age identity file (AGE-SECRET-KEY-1... lines,"
                " from age-keygen) or an SSH private key without a passphrase."
            )
        for key in keys:
            try:
                found.append(pyrage.x25519.Identity.from_str(key))
            except pyrage.IdentityError as exc:
                raise SecretsError(f"The identity file {path} holds an invalid age identity: {exc}.") from None
    return found


def fingerprint(recipients: Sequence[str]) -> str:
    """Names a set of recipients (order and spacing do not matter)."""
    joined = "\n".join(sorted(" ".join(r.split()[:2]) for r in recipients))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"nixgitops digest key\0" + key).hexdigest()[:12]


_SCRATCH_KEY = secrets.token_bytes(32)


def scratch_wrap(value: Any) -> Sensitive:
    """Makes a value sensitive with a key of this process only: for evaluations outside any deployment's state
    (their digests match nothing stored)."""
    mac = hmac.new(_SCRATCH_KEY, canonical(value), hashlib.sha256).hexdigest()
    return Sensitive(value, digest=f"hmac-sha256:{key_id(_SCRATCH_KEY)}:{mac}")


@dataclass
class Sealer:
    """Seals and opens one deployment's sensitive values.

    ``meta`` reads the state branch's ``deployment.json`` (where the digest key is kept sealed); ``key_file`` is the
    local copy of the digest key."""

    encryption: Encryption
    key_file: Path
    meta: Callable[[], Mapping[str, Any]] = dict
    _key: bytes | None = field(default=None, init=False)
    _recipients: list[Any] | None = field(default=None, init=False)
    _identities: list[Any] | None = field(default=None, init=False)
    _reuse: dict[str, tuple[str, str]] = field(default_factory=dict, init=False)
    seen_key_ids: set[str] = field(default_factory=set, init=False)
    resets: int = field(default=0, init=False)
    """How many digests ``rekey(reset=True)`` replaced."""
    """The digest keys (by id) of the sealed values read so far (``check_digests``)."""

    @classmethod
    def beside(cls, journal: Path, encryption: Encryption, meta: Callable[[], Mapping[str, Any]] = dict) -> Sealer:
        """The sealer of the deployment whose journal is ``journal``: its digest key is ``<journal>.digest-key``."""
        return cls(encryption, key_file=journal.with_suffix(".digest-key"), meta=meta)

    # -- keys ------------------------------------------------------------------------------------------------

    @property
    def encrypting(self) -> bool:
        return bool(self.encryption.recipients)

    def check(self) -> None:
        """Refuse a run that would write a sensitive value in clear: ``enforced`` without recipients. Also checks
        every recipient. Raises ``SecretsError`` (before any provider call)."""
        if self.encryption.enforced and not self.encryption.recipients:
            raise SecretsError(
                f"Encryption is enforced for this deployment, but {self.encryption.where} lists no recipients:"
                " nothing was applied. Add an age or SSH public key to the recipients."
            )
        self.recipients()

    def recipients(self) -> list[Any]:
        if self._recipients is None:
            self._recipients = [parse_recipient(r, self.encryption.where) for r in self.encryption.recipients]
        return self._recipients

    def identities(self) -> list[Any]:
        if self._identities is None:
            self._identities = load_identities(self.encryption.identity_files)
        return self._identities

    def digest_key(self) -> bytes:
        """The deployment's digest key. Of the local key and the one the state branch keeps sealed (decrypted with an
        identity when needed), the one that digested the values in state (``seen_key_ids``; load state first);
        else the sealed one (shared by every key holder), else the local one, else a new one. A local key is never
        overwritten: one that is replaced is kept beside it as ``<key file>.<key id>``."""
        if self._key is not None:
            return self._key
        local: bytes | None = None
        with contextlib.suppress(OSError):
            local = self.key_file.read_bytes()
        if local is not None and len(local) != 32:
            raise SecretsError(
                f"{self.key_file} is not a digest key (32 bytes). Restore it from the machine that applied this"
                " deployment, or remove it and run `nixgitops state rekey --reset-digests`."
            )
        stored = self.meta().get("digestKey")
        if isinstance(stored, Mapping) and isinstance(stored.get("age"), str) and stored.get("id"):
            used = self.seen_key_ids
            if local is not None and (key_id(local) == stored["id"] or key_id(local) in used - {stored["id"]}):
                self._key = local  # (it digested what state holds: the stored copy is healed at the next commit)
                return local
            try:
                key = base64.b64decode(self._open_bytes(stored["age"], "the deployment's digest key"))
            except Unavailable:
                raise SecretsError(
                    "This deployment has sensitive values, compared by a digest key that its state branch keeps"
                    " encrypted, and this machine has no copy of it: give an identity to decrypt it"
                    f" ({self.encryption.identity_hint})."
                ) from None
            if local is not None:  # (kept, not lost: it may be the one some other state was digested with)
                backup = self.key_file.with_name(f"{self.key_file.name}.{key_id(local)}")
                with contextlib.suppress(FileExistsError):
                    os.link(self.key_file, backup)
            return self._save_key(key, replace=True)
        if local is not None:
            self._key = local
            return local
        return self._save_key(secrets.token_bytes(32))

    def check_digests(self) -> None:
        """Refuse to plan against sensitive values digested with another key than this machine's: they would all
        look changed, and two machines would update them back and forth. Call after loading state."""
        seen = self.seen_key_ids - {"?"}
        if not seen:
            return
        mine = key_id(self.digest_key())
        foreign = sorted(seen - {mine})
        if foreign:
            shared = isinstance(self.meta().get("digestKey"), Mapping)
            where = (
                "the key the state branch keeps for key holders is another one too"
                if shared
                else "configure recipients, which keeps the key on the state branch for every key holder"
            )
            raise SecretsError(
                f"The sensitive values in state were digested with a key this machine does not have (key"
                f" {', '.join(foreign)}; here: {mine}), so nixgitops cannot tell whether they changed. Copy"
                f" {self.key_file.name} from the machine (or the controller's data directory) that applied them to"
                f" {self.key_file} ({where}). To digest them again with this machine's key instead, run `nixgitops"
                " state rekey --reset-digests`: what it can decrypt is digested again, the rest is sent again by the"
                " next apply."
            )

    def _save_key(self, key: bytes, *, replace: bool = False) -> bytes:
        """Keep ``key`` in the key file (mode 0600). A new key is linked into place only if there is none yet: of two
        runs making the first key at once (a preview and a reconcile), both end up with the one that won."""
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.key_file.with_name(f"{self.key_file.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            if replace:
                os.replace(tmp, self.key_file)
            else:
                try:
                    os.link(tmp, self.key_file)
                except FileExistsError:
                    key = self.key_file.read_bytes()
                    if len(key) != 32:
                        raise SecretsError(f"{self.key_file} is not a digest key (32 bytes); remove it.") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._key = key
        return key

    def meta_entry(self) -> dict[str, Any] | None:
        """What ``deployment.json`` keeps of the digest key (``digestKey``): sealed to the recipients, or nothing.
        The stored entry is kept as it is while the key and the recipients are the same."""
        if not self.encrypting or self._key is None:
            return None
        stored = self.meta().get("digestKey")
        to = fingerprint(self.encryption.recipients)
        kid = key_id(self._key)
        if isinstance(stored, Mapping) and stored.get("id") == kid and stored.get("to") == to:
            return dict(stored)
        sealed = pyrage.encrypt(base64.b64encode(self._key), self.recipients())
        return {"id": kid, "to": to, "age": base64.b64encode(sealed).decode()}

    # -- values ------------------------------------------------------------------------------------------------

    def digest(self, value: Any) -> str:
        key = self.digest_key()
        mac = hmac.new(key, canonical(value), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{key_id(key)}:{mac}"

    def wrap(self, value: Any) -> Sensitive:
        """A known value made sensitive."""
        return Sensitive(value, digest=self.digest(value), opener=self.open)

    def store(self, value: object) -> Any:
        """``json.dumps(..., default=sealer.store)``: a sensitive value as state and the journal keep it."""
        if not isinstance(value, Sensitive):
            raise TypeError(f"{type(value).__name__} is not JSON")
        entry: dict[str, Any] = {"digest": value.digest}
        if value.sealed is not None and not self.encrypting:
            # as stored: a reader without recipients (a checkout without .nixgitops/recipients, writing its cache or
            # a record it did not change) keeps the ciphertext, it does not drop it
            entry.update(age=value.sealed, to=value.to)
            return {SEALED_KEY: entry}
        if not self.encrypting:
            if self.encryption.enforced:
                raise SecretsError(
                    f"Encryption is enforced, but {self.encryption.where} lists no recipients: nothing sensitive is"
                    " written in clear. Add an age or SSH public key to the recipients."
                )
            return {SEALED_KEY: entry}
        to = fingerprint(self.encryption.recipients)
        if value.sealed is not None and (value.to == to or not value.has_value):
            # as stored (to the recipients of then, until `nixgitops state rekey`: it cannot be opened here)
            entry.update(age=value.sealed, to=value.to or to)
            return {SEALED_KEY: entry}
        if not value.has_value and value.sealed is None:
            return {SEALED_KEY: entry}  # stored as a digest only, before there were recipients
        if value.digest in self._reuse and self._reuse[value.digest][1] == to:
            sealed = self._reuse[value.digest][0]  # the same value as stored: the same bytes, no churn in Git
        else:
            sealed = base64.b64encode(pyrage.encrypt(canonical(value.reveal()), self.recipients())).decode()
            self._reuse[value.digest] = (sealed, to)
        entry.update(age=sealed, to=to)
        return {SEALED_KEY: entry}

    def revive(self, data: Any, *, own: bool = True) -> Any:
        """A JSON value read from state or the journal, with its sealed values made ``Sensitive`` (opened only when
        revealed). ``own``: the deployment's own (not another deployment's on a shared state branch, digested with
        that deployment's key): its digest keys are noted for ``check_digests``."""
        if isinstance(data, dict):
            entry = data.get(SEALED_KEY)
            if isinstance(entry, dict) and len(data) == 1:
                digest, sealed, to = str(entry.get("digest", "")), entry.get("age"), entry.get("to")
                if own:
                    self.seen_key_ids.add(digest.split(":")[1] if digest.count(":") == 2 else "?")
                if isinstance(sealed, str) and isinstance(to, str):
                    self._reuse.setdefault(digest, (sealed, to))
                return Sensitive(digest=digest, sealed=sealed, to=to, opener=self.open)
            return {k: self.revive(v, own=own) for k, v in data.items()}
        if isinstance(data, list):
            return [self.revive(v, own=own) for v in data]
        return data

    def open(self, sealed: str) -> Any:
        """Decrypt one stored value; raises ``Unavailable`` (no identity) or ``SecretsError`` (wrong identity)."""
        return json.loads(self._open_bytes(sealed, "a sensitive value"))

    def _open_bytes(self, sealed: str, what: str) -> bytes:
        if not self.encryption.identity_files:
            raise Unavailable(
                f"{what} is encrypted, and no identity was given to decrypt it: {self.encryption.identity_hint}",
                stored=True,
            )
        try:
            return bytes(pyrage.decrypt(base64.b64decode(sealed), self.identities()))
        except pyrage.DecryptError as exc:
            files = ", ".join(str(f) for f in self.encryption.identity_files)
            raise SecretsError(
                f"Cannot decrypt {what} with the identity given ({files}): {exc}. Use an identity whose public key is"
                f" among the recipients it was encrypted to ({self.encryption.where}; after adding a recipient, run"
                " `nixgitops state rekey` with an identity that can already decrypt)."
            ) from None

    def rekey(self, value: Any, *, reset: bool = False) -> Any:
        """A value with every sealed value re-encrypted to the current recipients (``nixgitops state rekey``); one
        kept as a digest only stays so (it was never stored). ``reset``: a digest made with another key than this
        machine's is replaced by one that matches no value, so that the next plan sends the value again."""
        if isinstance(value, Sensitive):
            mine = key_id(self.digest_key())
            digest = value.digest
            if reset and digest.split(":")[1:2] != [mine]:
                try:  # what can be decrypted is digested again; the rest matches no value (sent again)
                    digest = self.digest(value.reveal())
                except (Unavailable, SecretsError):
                    digest = f"hmac-sha256:{mine}:reset"
                self.resets += 1
            if not self.encrypting or (value.sealed is None and not value.has_value):
                return Sensitive(digest=digest, sealed=value.sealed, to=value.to, opener=self.open)
            plain = value.reveal()
            sealed = base64.b64encode(pyrage.encrypt(canonical(plain), self.recipients())).decode()
            return Sensitive(plain, digest=digest, sealed=sealed, to=fingerprint(self.encryption.recipients))
        if isinstance(value, dict):
            return {k: self.rekey(v, reset=reset) for k, v in value.items()}
        if isinstance(value, list):
            return [self.rekey(v, reset=reset) for v in value]
        return value
