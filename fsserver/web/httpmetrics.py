"""The HTTP API's metrics, in the server's one registry (``fsserver.telemetry``'s
multiprocess files): requests by route and status, bytes, and latency."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "fs_http_requests", "HTTP API requests answered, by route, method and status.",
    ["route", "method", "status"],
)  # fmt: skip
BYTES = Counter("fs_http_bytes", "HTTP bytes received and sent (headers included).",
                ["direction"])  # fmt: skip
SECONDS = Histogram(
    "fs_http_request_seconds", "Time from a request's head to the end of its answer, by route.",
    ["route"], buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0),
)  # fmt: skip


METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"})


def observe(route: str, method: str, status: int, started: float) -> None:
    """(Any other method counts as ``other``: a label per made-up method would grow the
    metrics without bound.)"""
    REQUESTS.labels(route, method if method in METHODS else "other", str(status)).inc()
    SECONDS.labels(route).observe(time.monotonic() - started)
