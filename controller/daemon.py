"""``nixgitops run``: the long-running controller, and the one-shot commands that share its configuration."""

from __future__ import annotations

import datetime
import signal
import sys
import threading
import time
from pathlib import Path

import uvicorn

from controller.config import Config, load
from controller.errors import UserError
from controller.metrics import Metrics
from controller.reconciler import Reconciler
from controller.scheduler import Scheduler
from controller.sensitive import redact
from controller.server import create_app


def log(line: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    print(f"{stamp} {redact(line)}", file=sys.stderr, flush=True)  # (sensitive values never reach the log)


def reconcilers(config: Config, metrics: Metrics | None = None) -> list[Reconciler]:
    return [Reconciler(config, d, log=log, metrics=metrics) for d in config.deployments.values()]


def serve(config: Config, scheduler: Scheduler, metrics: Metrics) -> uvicorn.Server:
    """Start the HTTP server on its own thread; returns once it listens."""
    token = config.server.token_file.read_text().strip() if config.server.token_file else None
    app = create_app(
        config,
        scheduler,
        metrics,
        token=token,
        preview=scheduler.preview_delivery,
        preview_closed=scheduler.preview_closed,
        log=log,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=config.server.host, port=config.server.port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    if not server.started:
        raise UserError(
            f"Cannot listen on {config.server.host}:{config.server.port} (`server.listen` in {config.path});"
            " is another process using it?"
        )
    return server


def run(config_path: Path) -> int:
    """Reconcile every deployment at start, then on its interval, until SIGTERM or SIGINT."""
    config = load(config_path)
    metrics = Metrics()
    scheduler = Scheduler(reconcilers(config, metrics))
    http = serve(config, scheduler, metrics)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    scheduler.start()
    names = ", ".join(sorted(config.deployments))
    log(
        f"nixgitops controller started: {names}; data in {config.data_dir};"
        f" http://{config.server.host}:{config.server.port}"
    )
    stop.wait()
    log("stopping: waiting for runs in progress to finish")
    scheduler.stop(wait=True)
    http.should_exit = True
    log("stopped")
    return 0
