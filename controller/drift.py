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
from controller.errors import ProviderError, SecretsError
from controller.model import ResourceState
from controller.provider_client import Providers
from controller.sealing import scratch_wrap
from controller.sensitive import Sensitive, Unavailable, Wrap, mark_outputs


@dataclass(frozen=True)
class Drift:
    drifted: tuple[str, ...]
    cannot_tell: tuple[str, ...]


def _check(resource: ResourceState, providers: Providers, wrap: Wrap) -> bool | None:
    message = protocol.read_request(resource.resource_type, resource.inputs, resource.outputs)
    hidden = frozenset(k for k, v in resource.outputs.items() if isinstance(v, Sensitive))
    if any(resource.outputs[k].digest.endswith(":reset") for k in hidden):
        return None  # (its digests were reset and it was not applied since: nothing to compare with)
    what = f"readResourceRequest for {resource.path!r}"
    try:
        answer = providers.call(resource.provider, message, what=what, hide=hidden)
    except (ProviderError, SecretsError, Unavailable):  # (a sealed input it cannot decrypt: it cannot ask)
        return None
    outputs = mark_outputs(dict(answer["outputProperties"]), hidden, wrap)  # compared by value or keyed digest
    return answer.get("inSync") is False or outputs != dict(resource.outputs)


def detect(
    state: Mapping[str, ResourceState], providers: Providers, *, parallelism: int = 8, wrap: Wrap = scratch_wrap
) -> Drift:
    """Read every resource back; which have drifted, and which the provider cannot tell. ``wrap``: the
    deployment's sealer's, so that a sensitive output read back compares with the recorded one."""
    paths = sorted(p for p in state if state[p].provider in providers.specs)
    with ThreadPoolExecutor(max_workers=max(1, parallelism), thread_name_prefix="drift") as pool:
        results = list(pool.map(lambda p: _check(state[p], providers, wrap), paths))
    drifted = tuple(p for p, r in zip(paths, results, strict=True) if r is True)
    unknown = tuple(p for p, r in zip(paths, results, strict=True) if r is None)
    unknown += tuple(sorted(p for p in state if state[p].provider not in providers.specs))
    return Drift(drifted, unknown)
