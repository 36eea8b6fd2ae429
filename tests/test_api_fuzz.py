"""Property-based fuzz of the status API against its own OpenAPI document: no request gets a 5xx."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from test_server import FakeScheduler, make_config

from controller.metrics import Metrics
from controller.server import create_app


def app() -> object:
    import tempfile

    config = make_config(Path(tempfile.mkdtemp(prefix="nixgitops-fuzz-")))
    return create_app(config, FakeScheduler(config), Metrics())  # type: ignore[arg-type]


schema = schemathesis.openapi.from_asgi("/openapi.json", app())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[schemathesis.checks.not_a_server_error])
