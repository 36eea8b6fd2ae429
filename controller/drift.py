"""Drift: resources whose real state no longer matches what was applied.

Each resource in state is read back with ``readResourceRequest``. It has drifted when the provider answers
``inSync: false`` (changed or gone) or with outputs other than the recorded ones. A provider that answers
``errorResponse`` cannot tell, which is counted apart and never called drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from controller import protocol
from controller.errors import ProviderError
from controller.model import ResourceState
from controller.provider_client import Providers


@dataclass(frozen=True)
class Drift:
    drifted: tuple[str, ...]
    cannot_tell: tuple[str, ...]


def _check(resource: ResourceState, providers: Providers) -> bool | None:
    message = protocol.read_request(resource.resource_type, resource.inputs, resource.outputs)
    try:
        answer = providers.call(resource.provider, message, what=f"readResourceRequest for {resource.path!r}")
    except ProviderError:
        return None
    return answer.get("inSync") is False or dict(answer["outputProperties"]) != dict(resource.outputs)


def detect(state: Mapping[str, ResourceState], providers: Providers, *, parallelism: int = 8) -> Drift:
    """Read every resource back; which have drifted, and which the provider cannot tell."""
    paths = sorted(p for p in state if state[p].provider in providers.specs)
    with ThreadPoolExecutor(max_workers=max(1, parallelism), thread_name_prefix="drift") as pool:
        results = list(pool.map(lambda p: _check(state[p], providers), paths))
    drifted = tuple(p for p, r in zip(paths, results, strict=True) if r is True)
    unknown = tuple(p for p, r in zip(paths, results, strict=True) if r is None)
    unknown += tuple(sorted(p for p in state if state[p].provider not in providers.specs))
    return Drift(drifted, unknown)
