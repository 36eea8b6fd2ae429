"""``nixgitops run``: the long-running controller, and the one-shot commands that share its configuration."""

from __future__ import annotations

import datetime
import signal
import sys
import threading
from pathlib import Path

from controller.config import Config, load
from controller.reconciler import Reconciler
from controller.scheduler import Scheduler


def log(line: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    print(f"{stamp} {line}", file=sys.stderr, flush=True)


def reconcilers(config: Config) -> list[Reconciler]:
    return [Reconciler(config, d, log=log) for d in config.deployments.values()]


def run(config_path: Path) -> int:
    """Reconcile every deployment at start, then on its interval, until SIGTERM or SIGINT."""
    config = load(config_path)
    scheduler = Scheduler(reconcilers(config))
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    scheduler.start()
    names = ", ".join(sorted(config.deployments))
    log(f"nixgitops controller started: {names}; data in {config.data_dir}")
    stop.wait()
    log("stopping: waiting for runs in progress to finish")
    scheduler.stop(wait=True)
    log("stopped")
    return 0
