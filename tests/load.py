"""An HTTP load generator for the daemon's server: requests at a fixed rate from a few threads, every answer
recorded (status and latency). Shared by tests/test_load.py and bench/soak.py."""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Result:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else 0.0

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000 if ordered else 0.0


class Burst:
    def __init__(self, base: str, threads: int = 8) -> None:
        self.host, _, port = base.removeprefix("http://").partition(":")
        self.port = int(port)
        self.threads = threads
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []

    def close(self) -> None:
        for connection in self._opened:
            connection.close()

    def runs(self, deployment: str) -> int:
        """How many runs of ``deployment`` the daemon has counted (``nixgitops_reconcile_total``, every outcome)."""
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if line.startswith("nixgitops_reconcile_total{") and f'deployment="{deployment}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "connection", None) is None:
            self._local.connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self._opened.append(self._local.connection)
        connection: http.client.HTTPConnection = self._local.connection
        return connection

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (1, 2):  # a kept-alive connection the server closed is opened again, once
            connection = self._connection()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> str:
        return self.request("GET", path, None, {})[1].decode()

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz", None, {})[0] == 200
        except OSError:
            self._local.connection = None
            return False

    def run(self, path: str, body: bytes, header_sets: list[dict[str, str]], *, rate: float, seconds: float) -> Result:
        """``rate`` requests per second for ``seconds``, cycling through ``header_sets``; waits for every answer."""
        result = Result()
        lock = threading.Lock()
        total = int(rate * seconds)

        def one(i: int) -> None:
            started = time.perf_counter()
            try:
                status, _ = self.request("POST", path, body, header_sets[i % len(header_sets)])
            except OSError as exc:
                with lock:
                    result.errors.append(f"request {i}: {exc!r}")
                return
            with lock:
                result.statuses[status] += 1
                result.latencies.append(time.perf_counter() - started)

        pacing = threading.Event()  # never set: its wait is the pacing clock of the load, not a synchronisation
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for i in range(total):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    pacing.wait(delay)
                pool.submit(one, i)
                result.sent += 1
        return result
