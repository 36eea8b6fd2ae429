"""The data nixgitops works on: desired resources (from Nix), resource state (from Git), providers.

Pure: frozen dataclasses and conversions to and from JSON, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

LOCAL_PROVIDER: Final = "local"
LOCAL_RESOURCE_TYPES: Final = ("file", "exec", "memo", "state_file")


class Marker:
    """A named marker value that is not JSON: compared by identity, shown by its name."""

    def __init__(self, shown: str) -> None:
        self._shown = shown

    def __repr__(self) -> str:
        return self._shown


UNKNOWN: Final = Marker("(known after apply)")
"""The value of an input that reads outputs which are only known after apply."""

ABSENT: Final = Marker("(absent)")
"""A field that does not exist on one side of a field change."""


def provider_of(qualified_type: str) -> str:
    """The provider of a type written ``<provider>.<resource type>``."""
    return qualified_type.split(".", 1)[0]


class Typed:
    """Something with a ``type`` written ``<provider>.<resource type>``."""

    type: str

    @property
    def provider(self) -> str:
        return provider_of(self.type)

    @property
    def resource_type(self) -> str:
        """The provider's own name for the type: what goes on the wire."""
        return self.type.split(".", 1)[1]


@dataclass(frozen=True)
class ProviderSpec:
    """A provider: an executable speaking the resource protocol, and the resource types it serves."""

    name: str
    executable: str
    args: tuple[str, ...]
    resource_types: frozenset[str]
    builtin: bool = False
    needs: frozenset[str] = frozenset()
    """The store paths its executable and arguments refer to, realised before it starts (``controller.builds``)."""
    stateless_types: frozenset[str] = frozenset()
    """The types declared with ``requireState = false`` (NixOps4's shape of ``resourceTypes``): their resources
    have no state of their own, and are made again on every apply, as NixOps4 does (see docs/nixops4.md)."""
    sensitive_outputs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Per resource type, the outputs it declares sensitive (``resourceTypes.db = { sensitiveOutputs = [ ... ];
    }``): hidden and sealed wherever they go (docs/secrets.md)."""

    def sensitive_for(self, resource_type: str) -> frozenset[str]:
        return frozenset(next((names for t, names in self.sensitive_outputs if t == resource_type), ()))


@dataclass(frozen=True)
class DesiredResource(Typed):
    """A resource as the deployment expression declares it, at one evaluation pass.

    ``inputs`` maps each input field to its JSON value or to ``UNKNOWN`` when the field reads outputs that
    are not known yet. ``inputs_known`` is false when not even the field names could be computed.
    ``blocked_by`` names the resources whose unknown outputs the unknown fields were seen to read.
    ``reads`` names every resource whose outputs the inputs read, known or unknown (see docs/decisions.md,
    "Dependency edges", for how exact that is).
    """

    path: str
    type: str
    inputs: Mapping[str, Any]
    inputs_known: bool = True
    blocked_by: frozenset[str] = frozenset()
    prevent_destroy: bool = False
    reads: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()
    """The store paths the inputs' strings refer to (Nix string context: ``<drv>!<output>``, a .drv for all its
    outputs, a source path), realised before the inputs go to the provider (``controller.builds``)."""
    stateless: bool = False
    """Made again on every apply with ``isStateful: false`` and never updated, as NixOps4 treats a resource
    without a state handler (a NixOps4 root's resource with no ``state``; a type declared ``requireState =
    false`` with no ``state``). Its record on the state branch keeps its last inputs and outputs all the same."""
    state_handler: str | None = None
    """The path of the resource NixOps4 would keep this one's state in (``state = members.x``): recorded; the
    state branch keeps the state."""
    sensitive_outputs: frozenset[str] = frozenset()
    """The outputs to hide and seal: those its type declares sensitive and ``lifecycle.sensitiveOutputs``."""

    @property
    def ready(self) -> bool:
        """True when every input is known, so the resource can be sent to its provider."""
        return self.inputs_known and all(v is not UNKNOWN for v in self.inputs.values())

    @property
    def unknown_fields(self) -> tuple[str, ...]:
        return tuple(sorted(k for k, v in self.inputs.items() if v is UNKNOWN))


_RECORD_KEYS: Final = frozenset(
    (
        "path",
        "type",
        "provider",
        "inputs",
        "outputs",
        "dependencies",
        "preventDestroy",
        "sourceCommit",
        "createdAt",
        "updatedAt",
        "rank",
        "read",
        "storePaths",
        "stateless",
        "stateHandler",
        "sensitiveOutputs",
    )
)


@dataclass(frozen=True)
class ResourceState(Typed):
    """A resource as recorded on the state branch after a provider created or updated it."""

    path: str
    type: str
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    dependencies: tuple[str, ...] = ()
    prevent_destroy: bool = False
    source_commit: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    rank: int = 0
    """Where the resource's last operation stands in the order of operations: above the rank of every
    resource it read then (see docs/decisions.md, "Dependency edges"); 0 in records of older versions."""
    read: bool = False
    """Whether any resource was ever seen reading this one's outputs (never cleared): such a resource is deleted
    after every resource deleted with it that ranks above it."""
    store_paths: tuple[str, ...] = ()
    """The Nix store paths its last operation was given (built outputs and sources its inputs and its provider
    refer to): kept alive by garbage-collector roots while the record exists (``controller.builds``)."""
    stateless: bool = False
    """See ``DesiredResource.stateless``: deleting it calls no provider (there is nothing NixOps4 could delete)."""
    state_handler: str | None = None
    sensitive_outputs: tuple[str, ...] = ()
    """The outputs kept sealed (see ``DesiredResource.sensitive_outputs``): what recovery marks again."""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "provider": self.provider,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "dependencies": list(self.dependencies),
            "preventDestroy": self.prevent_destroy,
            "sourceCommit": self.source_commit,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            **({"rank": self.rank} if self.rank else {}),
            **({"read": True} if self.read else {}),
            **({"storePaths": list(self.store_paths)} if self.store_paths else {}),
            **({"stateless": True} if self.stateless else {}),
            **({"stateHandler": self.state_handler} if self.state_handler else {}),
            **({"sensitiveOutputs": list(self.sensitive_outputs)} if self.sensitive_outputs else {}),
            **dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResourceState:
        # Built without the dataclass's __init__ (nine frozen-field assignments each): loading the state of
        # 10,000 resources takes 15 ms instead of 46.
        record = object.__new__(cls)
        record.__dict__.update(
            path=str(data["path"]),
            type=str(data["type"]),
            inputs=dict(data.get("inputs") or {}),
            outputs=dict(data.get("outputs") or {}),
            dependencies=tuple(data.get("dependencies") or ()),
            prevent_destroy=bool(data.get("preventDestroy", False)),
            source_commit=data.get("sourceCommit"),
            created_at=data.get("createdAt"),
            updated_at=data.get("updatedAt"),
            extra={k: v for k, v in data.items() if k not in _RECORD_KEYS},
            rank=int(data.get("rank") or 0),
            read=bool(data.get("read", False)),
            store_paths=tuple(data.get("storePaths") or ()),
            stateless=bool(data.get("stateless", False)),
            state_handler=data.get("stateHandler"),
            sensitive_outputs=tuple(data.get("sensitiveOutputs") or ()),
        )
        return record


class KnownOutputs(Mapping[str, Mapping[str, Any]]):
    """The outputs that are final during one run, keyed by resource path. They only change through ``set`` and
    ``discard``, which log the path, so that a persistent evaluator can send Nix only what changed since it last
    looked (``changes`` from its cursor on) instead of every output on every pass."""

    def __init__(self, initial: Mapping[str, Mapping[str, Any]] = {}) -> None:
        self._outputs: dict[str, Mapping[str, Any]] = dict(initial)
        self.changes: list[str] = list(self._outputs)

    def set(self, path: str, outputs: Mapping[str, Any]) -> None:
        self._outputs[path] = outputs
        self.changes.append(path)

    def discard(self, path: str) -> None:
        if self._outputs.pop(path, None) is not None:
            self.changes.append(path)

    def snapshot(self) -> dict[str, Mapping[str, Any]]:
        """A copy, safe to read while another thread keeps changing this one."""
        return dict(self._outputs)

    def __getitem__(self, path: str) -> Mapping[str, Any]:
        return self._outputs[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self._outputs)


@dataclass(frozen=True)
class EvalLimits:
    """What a deployment's evaluation may use. Evaluation runs what lands in Git: it gets a time and a memory limit,
    and (restricted) it reads only files of its own repository and ``allowed_paths``, fetches nothing and builds
    nothing (Nix's restrict-eval, no allowed URIs, no import from derivation)."""

    timeout: float = 300.0
    memory: int = 2 * 1024**3
    restrict: bool = True
    allowed_paths: tuple[str, ...] = ()
    nix_path: tuple[str, ...] = ()
    """Search-path entries (``nixpkgs=/path``) that ``<nixpkgs>`` finds; their paths may be read."""


@dataclass(frozen=True)
class NixSettings:
    """How nixgitops runs Nix: ``options`` (``--option NAME VALUE``: substituters, trusted keys, ...) go to every
    Nix command it runs; one build may take ``build_timeout`` seconds."""

    options: tuple[tuple[str, str], ...] = ()
    build_timeout: float = 1800.0
