"""How every Nix command nixgitops runs is told where the store is and what the configuration adds.

Nix reads its own configuration (``nix.conf``, ``NIX_CONF_DIR``, ``NIX_CONFIG``) as always; on top of it come
``NIXGITOPS_NIX_STORE`` (passed as ``--store``) and the deployment's ``nix_options`` (``--option NAME VALUE``), the
same for evaluation, flakes and builds, so that an evaluation and the build of what it referred to see one store.
"""

from __future__ import annotations

import os

from controller.model import NixSettings

FLAKES = ["--extra-experimental-features", "nix-command flakes"]  # Nix 2.8 ships flakes as experimental


def common_options(settings: NixSettings) -> list[str]:
    """``--store`` (from ``NIXGITOPS_NIX_STORE``) and ``--option NAME VALUE`` for each of ``settings.options``."""
    out = ["--store", store] if (store := os.environ.get("NIXGITOPS_NIX_STORE")) else []
    for name, value in settings.options:
        out += ["--option", name, value]
    return out
