"""Errors, sorted by how the program must react to them.

::

    NixgitopsError                 base of everything we raise on purpose
    ├── UserError                  the user must fix something; never retried; exit code 1
    │   ├── EvaluationError        Nix could not evaluate the deployment (carries Nix's own message)
    │   ├── DeploymentError        it evaluated, but is not a valid deployment (unknown provider, cycle, ...)
    │   └── PlanError              the plan is refused (``lifecycle.preventDestroy``)
    │       └── EmptyDeploymentError   it declares nothing, so the plan would delete everything in state
    │   └── SecretsError       sensitive values cannot be sealed or opened (no recipients, no or wrong identity)
    ├── ProviderError              a provider failed one request (error response, crash, timeout, bad line)
    └── StateError                 the state branch cannot be read or written

Any other exception is a bug: the command line prints it with its traceback and asks for a report.
Messages are full sentences that say what happened and what to do, and never contain secrets.
"""

from __future__ import annotations


class NixgitopsError(Exception):
    """Base class of every error nixgitops raises on purpose."""

    exit_code = 1


class UserError(NixgitopsError):
    """Something the user must fix: bad Nix, a bad deployment, a refused plan. Retrying does not help."""


class EvaluationError(UserError):
    """Nix failed to evaluate the deployment; the message holds Nix's own error text and location."""


class DeploymentError(UserError):
    """The deployment evaluated but does not describe valid resources (names, types, providers, cycles)."""


class PlanError(UserError):
    """The plan was computed but must not be applied (for example it would destroy a protected resource)."""


class EmptyDeploymentError(PlanError):
    """The deployment declares no resource while state holds some: its plan would delete everything.

    Refused unless allowed (``--allow-empty``, ``allow_empty = true``); the controller reports it as ``refused``.
    """


class SecretsError(UserError):
    """Sensitive values cannot be encrypted or decrypted as asked: encryption enforced without recipients, a bad
    recipient, no identity where one is needed, or an identity that is not among the recipients."""


class ProviderError(NixgitopsError):
    """A provider could not carry out one request.

    ``fatal`` is true when the outcome of the request is unknown: the process was killed by a signal, or stopped
    by nixgitops (it hung past the timeout or broke the protocol), while it held the request; the journal keeps
    such an operation for recovery to settle. ``fatal`` is false when the request failed and changed nothing: an
    ``errorResponse`` (the process stays in the pool), or a process that ended by itself, with any exit status,
    before it answered (it is replaced). See docs/provider-protocol.md, "When a provider fails".
    """

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class StateError(NixgitopsError):
    """The state branch could not be read or written."""
