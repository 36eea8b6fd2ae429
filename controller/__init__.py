"""nixgitops: a GitOps controller for declarative resource management written in Nix.

The package is laid out one concept per module; data flows one way (see docs/architecture.md):

    evaluation (Nix -> desired resources) -> planning (pure) -> apply (providers) -> state_branch (Git)

``engine`` ties these together for one deployment; ``cli`` is the command-line face.
"""

from __future__ import annotations

__version__ = "0.1.0"
