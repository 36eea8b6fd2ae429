"""Sensitive values: what they are in memory, how they are shown, and the redaction of free text.

A value the deployment marks with ``sensitive``, or an output a provider or the resource declares sensitive, is
held as a ``Sensitive``: it is not JSON, so nothing can write it by accident (``json.dumps`` raises). Whoever
writes one says how (see docs/secrets.md):

* ``masked`` / ``MASK``: ``(sensitive)``, for people and machines (plans, the status API, errors);
* ``wire``: the real value, for the provider that must receive it (``protocol.encode``);
* ``controller.sealing.Sealer.store``: encrypted to age recipients and a keyed digest, for the state branch and
  the journal.

Two values are equal when their values are (both known) or else when their keyed digests are: a plan can tell a
change without decrypting anything. Every value that becomes known is remembered for ``redact``, which every log
sink and error printer applies: a value that reaches free text anyway (a ``builtins.trace``, a provider's stderr,
an error message quoting it) is replaced by ``(sensitive)``.

Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from controller.errors import SecretsError

MASK: Final = "(sensitive)"
HARNESS_KEY: Final = "__nixgitopsSensitive"
"""``{"__nixgitopsSensitive": value}``: a sensitive value between the harness and Python, in both directions."""
WITHHELD_KEY: Final = "__nixgitopsWithheld"
"""``{"__nixgitopsWithheld": why}``: an output the harness must refuse to read (its value is not available)."""
SEALED_KEY: Final = "__nixgitopsSealed"
"""``{"__nixgitopsSealed": {"digest", "age"?, "to"?}}``: a sensitive value as state and the journal keep it."""
MIN_REDACTED: Final = 4
"""Values shorter than this are masked where they are structured (plans, state, API) but not searched for in free
text: replacing every "1" or "on" in a log would hide everything else."""

_MISSING: Final = object()


class Unavailable(Exception):
    """A sensitive value that cannot be revealed here; the message says why and what to do. ``stored`` is false
    when it was never stored (no recipients), true when it is, but no identity here can decrypt it."""

    def __init__(self, message: str, *, stored: bool) -> None:
        super().__init__(message)
        self.stored = stored


Opener = Callable[[str], Any]
"""Decrypts a stored value (``age``, base64) to the JSON value; raises ``Unavailable``."""


class Sensitive:
    """A value to hide: known (``has_value``), or only stored (a digest, and a ciphertext when there were
    recipients), revealed on demand through ``opener``."""

    __slots__ = ("_value", "digest", "opener", "sealed", "to")

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        digest: str,
        sealed: str | None = None,
        to: str | None = None,
        opener: Opener | None = None,
    ) -> None:
        self._value = value
        self.digest = digest
        """``hmac-sha256:<key id>:<hex>`` of the value's canonical JSON, with the deployment's digest key."""
        self.sealed = sealed
        """The value encrypted with age to the recipients ``to`` names (base64), or None."""
        self.to = to
        """A fingerprint of the recipients ``sealed`` was encrypted to."""
        self.opener = opener
        if value is not _MISSING:
            remember(value)

    @property
    def has_value(self) -> bool:
        return self._value is not _MISSING

    def reveal(self) -> Any:
        """The value; raises ``Unavailable`` when it was not stored, or cannot be decrypted here."""
        if self._value is _MISSING:
            if self.sealed is None:
                raise Unavailable(
                    "it was stored only as a keyed digest, because no age recipients were configured when it was"
                    " written. Configure recipients (.nixgitops/recipients, or [deployments.NAME.encryption]; see"
                    " docs/secrets.md), then make the resource again so that its outputs are kept encrypted",
                    stored=False,
                )
            if self.opener is None:
                raise Unavailable(
                    "it is encrypted, and no identity was given to decrypt it: give one (--identity FILE, or"
                    " identity_file in the deployment's [encryption])",
                    stored=True,
                )
            value = self.opener(self.sealed)
            remember(value)
            self._value = value
        return self._value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sensitive):
            return NotImplemented
        if self.has_value and other.has_value:
            return type(self._value) is type(other._value) and bool(self._value == other._value)
        return self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __reduce__(self) -> Any:  # never pickled with its value (multiprocessing, copy)
        raise TypeError("a sensitive value is not pickled")


def canonical(value: Any) -> bytes:
    """The bytes a value's digest is computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def contains(value: Any) -> bool:
    """Whether a JSON-like value holds a sensitive value anywhere."""
    if isinstance(value, Sensitive):
        return True
    if isinstance(value, dict):
        return any(contains(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(contains(v) for v in value)
    return False


def masked(value: Any) -> Any:
    """A copy with every sensitive value replaced by ``(sensitive)``."""
    if isinstance(value, Sensitive):
        return MASK
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return value


def mask_sealed(value: Any) -> Any:
    """A JSON value read from state without a sealer, with each sealed value shown as ``(sensitive)``."""
    if isinstance(value, dict):
        if len(value) == 1 and SEALED_KEY in value:
            return MASK
        return {k: mask_sealed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_sealed(v) for v in value]
    return value


def mask_default(value: object) -> Any:
    """``json.dumps(..., default=mask_default)``: sensitive values as ``(sensitive)``."""
    if isinstance(value, Sensitive):
        return MASK
    raise TypeError(f"{type(value).__name__} is not JSON")


def digest_default(value: object) -> Any:
    """``json.dumps(..., default=digest_default)``: sensitive values as their keyed digest (which changes with the
    value and reveals nothing of it): for fingerprints of plans."""
    if isinstance(value, Sensitive):
        return {SEALED_KEY: value.digest}
    raise TypeError(f"{type(value).__name__} is not JSON")


def wire(value: object) -> Any:
    """``json.dumps(..., default=wire)``: sensitive values as they are, for the provider. A value stored only as a
    digest (no recipients were configured) goes as null: nixgitops does not have it. One that is encrypted and
    cannot be decrypted here raises ``SecretsError`` (the request is not sent)."""
    if isinstance(value, Sensitive):
        try:
            return value.reveal()
        except Unavailable as exc:
            if exc.stored:
                raise SecretsError(
                    f"A request holds a sensitive value of the last apply that cannot be sent: {exc}."
                ) from None
            return None
    raise TypeError(f"{type(value).__name__} is not JSON")


def harness_default(value: object) -> Any:
    """``json.dumps(..., default=harness_default)``: known outputs for the Nix harness, which marks them sensitive
    again; one that cannot be revealed is withheld, and reading it fails with why."""
    if isinstance(value, Sensitive):
        try:
            return {HARNESS_KEY: value.reveal()}
        except (Unavailable, SecretsError) as exc:  # (no identity, or a wrong one: only a reader fails, with why)
            return {WITHHELD_KEY: str(exc)}
    raise TypeError(f"{type(value).__name__} is not JSON")


def mark_outputs(outputs: Mapping[str, Any], names: Collection[str], wrap: Wrap) -> dict[str, Any]:
    """A provider's ``outputs`` with those declared sensitive (``names``) made so, and every other one that quotes a
    sensitive value this process knows (an output echoing the password it was given)."""
    hidden = {k for k, v in outputs.items() if k in names or quotes_sensitive(v)}
    if not hidden:
        return dict(outputs)
    return {k: wrap(v) if k in hidden and not isinstance(v, Sensitive) else v for k, v in outputs.items()}


Wrap = Callable[[Any], Sensitive]
"""Makes a known value sensitive (computes its digest with the deployment's key)."""


def unwrap_harness(value: Any, wrap: Wrap) -> Any:
    """A JSON value from the harness with its ``{"__nixgitopsSensitive": v}`` markers made ``Sensitive``."""
    if isinstance(value, dict):
        if len(value) == 1 and HARNESS_KEY in value:
            return wrap(value[HARNESS_KEY])
        return {k: unwrap_harness(v, wrap) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_harness(v, wrap) for v in value]
    return value


# -- redaction of free text ----------------------------------------------------------------------------------

_known: set[str] = set()
_ordered: tuple[int, list[str]] = (0, [])  # the values, longest first, as of a size of _known


def _texts(value: Any) -> list[str]:
    """The strings in a value. Numbers and booleans are left out: masked where they are structured, they are not
    searched for in free text, where ``5432`` would also be found inside every other number that holds it."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


def remember(value: Any) -> None:
    """Remember a sensitive value's text (and its text as JSON writes it inside a string) for ``redact``."""
    for text in _texts(value):
        if len(text) < MIN_REDACTED:
            continue
        _known.add(text)  # (set.add is atomic: threads may remember while others redact)
        escaped = json.dumps(text, ensure_ascii=False)[1:-1]
        if escaped != text:
            _known.add(escaped)
        ascii_escaped = json.dumps(text)[1:-1]
        if ascii_escaped != text:
            _known.add(ascii_escaped)
        for line in text.splitlines():  # a multi-line value printed line by line
            if len(line.strip()) >= MIN_REDACTED:
                _known.add(line.strip())


def forget_all() -> None:
    """Forget every value remembered for ``redact``: the values of one process are all its deployments', and a test
    suite runs many unrelated ones in one process."""
    global _ordered
    _known.clear()
    _ordered = (0, [])


def _values() -> list[str]:
    global _ordered
    count, values = _ordered
    if count != len(_known):
        values = sorted(tuple(_known), key=len, reverse=True)
        _ordered = (len(values), values)
    return values


def redact(text: str) -> str:
    """``text`` with every sensitive value known to this process replaced by ``(sensitive)``.

    One substring search per value (C speed, about 0.1 us each): cheaper than a regular expression of them all,
    which would be compiled again each time a value becomes known (every settled operation of a chain)."""
    if not _known or not text:
        return text
    for value in _values():  # longest first: a value that holds another is replaced whole
        if value in text:
            text = text.replace(value, MASK)
    return text


def quotes_sensitive(value: Any) -> bool:
    """Whether a JSON value that is not marked sensitive holds the text of a sensitive value (an output that echoes
    the password it was given)."""
    if not _known or value is None or isinstance(value, bool | Sensitive):
        return False
    return any(redact(text) != text for text in _texts(value))


def redact_value(value: Any) -> Any:
    """A JSON-like value with every string redacted (``redact``) and every sensitive value masked."""
    if isinstance(value, Sensitive):
        return MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
