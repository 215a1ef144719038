"""Every Prometheus metric the server exports, in prometheus-client's multiprocess mode.

Each process writes its own values to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by ``fsserver``
before any process imports prometheus-client, see ``fsserver.cli``), and the supervisor's
``/metrics`` adds them up. Counters of a process that died keep counting in the total (no
double counting: the replacement starts its own file); its gauges disappear once the supervisor
calls ``mark_process_dead``. Gauges that prometheus-client cannot collect in this mode (memory,
CPU, descriptors, start time) are sampled by each process with psutil.

Every per-process metric (``PER_PROCESS``) carries the labels ``role`` and ``index`` (which
process: ``worker`` 1, ``hasher`` 0...), never a ``pid``: a replaced worker keeps its series,
instead of starting new ones after every restart. The process metrics keep the client
library's names (``process_cpu_seconds_total``, ``process_start_time_seconds``...).

Hot paths never touch these objects per packet: connections count in plain integers (see
``common.connection``) and the worker adds the deltas up once a second.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import psutil
from prometheus_client import Counter, Gauge, Histogram

from common.messages import PacketType

if TYPE_CHECKING:
    from common.connection import FSConnection

ROLE_LABELS = ("role", "index")
PACKET_NAMES = {int(t): t.name.lower() for t in PacketType}

CONNECTIONS_ACTIVE = Gauge(
    "fs_connections_active", "Client connections open, by worker.", ROLE_LABELS,
    multiprocess_mode="livesum",
)  # fmt: skip
CONNECTIONS = Counter("fs_connections", "Client connections accepted, by worker.", ROLE_LABELS)
SUBSCRIBERS = Gauge(
    "fs_subscribers", "Clients following a share's changes (fsclient sync), by worker.",
    ROLE_LABELS, multiprocess_mode="livesum",
)  # fmt: skip
REFUSALS = Counter(
    "fs_refusals", "Connections, handshakes, uploads and deletes refused, by reason.", ["reason"]
)
RECEIVED_BYTES = Counter(
    "fs_received_bytes", "Bytes received from clients, by packet type.", ["packet_type"]
)
SENT_BYTES = Counter("fs_sent_bytes", "Bytes sent to clients, by packet type.", ["packet_type"])
RECEIVED_PACKETS = Counter(
    "fs_received_packets", "Packets received from clients, by packet type.", ["packet_type"]
)
SENT_PACKETS = Counter("fs_sent_packets", "Packets sent to clients, by packet type.",
                       ["packet_type"])  # fmt: skip
SESSIONS = Counter(
    "fs_sync_sessions", "File sessions ended, by direction and outcome.",
    ["direction", "outcome"],
)  # fmt: skip
HASH_SECONDS = Histogram(
    "fs_hash_seconds", "Time to digest one extent, or one small-file batch, in a hasher.",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)  # fmt: skip
HASH_BYTES = Counter("fs_hash_bytes", "Bytes digested by the hashing pool.")
HASH_QUEUE = Gauge(
    "fs_hash_queue_depth", "Hash jobs sent by workers and not yet answered.",
    multiprocess_mode="livesum",
)  # fmt: skip
RESTARTS = Counter("fs_restarts", "Worker, hasher and persister processes restarted.", ROLE_LABELS)
DISK_WRITE_BYTES = Counter(
    "fs_disk_write_bytes", "Bytes of file content the persisting process wrote to the data dir."
)
FSYNC_SECONDS = Histogram(
    "fs_fsync_seconds",
    "Time to make one group of changes durable (segment fsync and catalog commit).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)  # fmt: skip
PERSIST_FAILURES = Counter(
    "fs_persist_failures", "Groups of changes the data dir refused (a full disk), tried again."
)
RECOVERY_SECONDS = Gauge(
    "fs_recovery_seconds", "Time the last start took to load the data dir.",
    multiprocess_mode="max",
)  # fmt: skip
RECOVERY_DAMAGED = Counter(
    "fs_recovery_damaged_records",
    "Records of the data dir found damaged at start and dropped (a torn tail, or --repair).",
)
AUTH_FAILURES = Counter("fs_auth_failures", "Handshakes refused for a bad or missing token.")
THROTTLED = Counter(
    "fs_throttled_connections", "Connections turned away from addresses that failed too often."
)
# The live gauges below are summed per (role, index): one process at a time has each. They
# stay out of the default registry, whose own process collector has these names.
RSS = Gauge(
    "process_resident_memory_bytes", "Resident memory of each server process.", ROLE_LABELS,
    multiprocess_mode="livesum", registry=None,
)  # fmt: skip
USS = Gauge(
    "fs_process_unique_memory_bytes", "Memory of each server process that no other process "
    "shares (USS): its own cost, without the shared arena that its RSS counts again.",
    ROLE_LABELS, multiprocess_mode="livesum",
)  # fmt: skip
CPU = Counter(
    "process_cpu_seconds", "CPU time (user + system) used by each server process; a replaced "
    "process's time stays in the total.", ROLE_LABELS, registry=None,
)  # fmt: skip
FDS = Gauge(
    "process_open_fds", "Open file descriptors of each server process.", ROLE_LABELS,
    multiprocess_mode="livesum", registry=None,
)  # fmt: skip
STARTED = Gauge(
    "process_start_time_seconds", "When each server process started (Unix time).", ROLE_LABELS,
    multiprocess_mode="livesum", registry=None,
)  # fmt: skip
LOOP_LAG = Gauge(
    "fs_process_event_loop_lag_seconds",
    "How late a 1-second timer fired on the event loop (acceptor and workers).", ROLE_LABELS,
    multiprocess_mode="livesum",
)  # fmt: skip
PER_PROCESS = frozenset(
    metric._name
    for metric in (CONNECTIONS_ACTIVE, CONNECTIONS, SUBSCRIBERS, RESTARTS, RSS, USS, CPU, FDS,
                   STARTED, LOOP_LAG)
)  # fmt: skip
"""The metrics with a series per process, labelled ``role`` and ``index``."""

SESSION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0)  # fmt: skip
UPLOAD_SECONDS = Histogram(
    "fs_upload_duration_seconds",
    "Time from an upload's reservation (a small-file batch's arrival) to its commit.",
    buckets=SESSION_BUCKETS,
)  # fmt: skip
DOWNLOAD_SECONDS = Histogram(
    "fs_download_duration_seconds",
    "Time from a download's opening to the client's verdict on its digest.",
    buckets=SESSION_BUCKETS,
)  # fmt: skip
LIST_SECONDS = Histogram(
    "fs_list_duration_seconds", "Time to answer one listing request (one page).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)  # fmt: skip

SAMPLE_EVERY = 1.0
USS_BUDGET = 0.01
"""Share of one core that reading USS may take. ``memory_full_info`` reads ``/proc/PID/smaps``,
which walks every mapped page: ~5 ms with a 256 MiB arena mapped (0.015 ms for RSS), and more
with a bigger arena. So USS is read again only after 100 times the last read's cost: with each
sample (1 s) up to ~10 ms, less often with a bigger arena (~2 s with 1 GiB)."""


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``observe`` each value, with one write per bucket touched instead of three per value
    (each write of a multiprocess value is a locked store into a memory-mapped file; a hasher
    digests thousands of small extents a second)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another prometheus-client
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        for index, bound in enumerate(bounds):
            if value <= bound:
                counts[index] += 1
                break
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
    total.inc(sum(values))


REFUSAL_REASONS = (
    "auth_failed", "throttled", "too_many_connections", "limit_exceeded", "read_only",
    "invalid_path", "too_large", "no_space", "quota", "max_files", "disk_full", "conflict",
)  # fmt: skip
"""The usual reasons, exported as 0 from the start (others appear when first counted)."""


def start_at_zero(processes: list[tuple[str, int]]) -> None:
    """Export the restarts of each process and the usual refusals as 0 before they happen, so
    that ``increase()`` sees their first one."""
    for role, index in processes:
        RESTARTS.labels(role, str(index))
    for reason in REFUSAL_REASONS:
        REFUSALS.labels(reason)


def refused(reason: str, count: int = 1) -> None:
    """Count a refusal: a short lowercase reason such as ``quota`` or ``auth_failed``."""
    REFUSALS.labels(reason).inc(count)


class ProcessSampler:
    """Publishes this process's RSS, USS, CPU time, open descriptors and start time under the
    labels ``role`` and ``index``."""

    def __init__(self, role: str, index: int = 0) -> None:
        self.labels = (role, str(index))
        self.process = psutil.Process(os.getpid())
        self.next = 0.0
        self.cpu = 0.0
        self.uss_next = 0.0
        STARTED.labels(*self.labels).set(self.process.create_time())

    def sample(self) -> None:
        with self.process.oneshot():
            times = self.process.cpu_times()
            RSS.labels(*self.labels).set(self.process.memory_info().rss)
            cpu = times.user + times.system
            CPU.labels(*self.labels).inc(max(0.0, cpu - self.cpu))
            self.cpu = max(cpu, self.cpu)
            FDS.labels(*self.labels).set(self.process.num_fds())
            now = time.monotonic()
            if now >= self.uss_next:
                USS.labels(*self.labels).set(self.process.memory_full_info().uss)
                self.uss_next = now + (time.monotonic() - now) / USS_BUDGET

    def due(self) -> bool:
        """For loops without asyncio (hashers): True once a second."""
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + SAMPLE_EVERY
        return True

    async def run(self) -> None:
        """For event loops: sample once a second, and measure how late the timer fires."""
        loop = asyncio.get_running_loop()
        LOOP_LAG.labels(*self.labels).set(0.0)
        while True:
            self.sample()
            expected = loop.time() + SAMPLE_EVERY
            await asyncio.sleep(SAMPLE_EVERY)
            LOOP_LAG.labels(*self.labels).set(max(0.0, loop.time() - expected))


PAYLOAD_BYTES = Counter(
    "fs_payload_bytes", "File bytes carried by data packets and batches, counted before "
    "compression, by direction (received from / sent to clients).", ["direction"],
)  # fmt: skip
WIRE_BYTES = Counter(
    "fs_payload_wire_bytes", "Bytes of the data packets and batches that carried "
    "fs_payload_bytes, as on the wire, by direction: the ratio is what compression saves.",
    ["direction"],
)  # fmt: skip
COMPRESSION_SECONDS = Counter(
    "fs_compression_cpu_seconds", "CPU seconds spent compressing and decompressing payloads, by "
    "role and operation.", ["role", "operation"],
)  # fmt: skip
_CODING = ("payload_in", "wire_in", "payload_out", "wire_out", "compress", "decompress")


class TrafficCounts:
    """Adds a connection's packet counts to the counters, as deltas since the last time.
    ``add`` only sums them up per process; ``flush_traffic`` adds the sums to the counters:
    once a second for every connection at once (a counter's ``inc`` costs far more than a sum,
    and a worker may have thousands of busy connections)."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = [[0] * 256 for _ in range(4)]
        self.coding_seen: list[float] = [0] * len(_CODING)

    def add(self, conn: FSConnection) -> None:
        counts = conn.traffic()
        self.add_coding(conn)
        for now, seen, pending in zip(counts, self.seen, _PENDING, strict=True):
            if now == seen:  # (one comparison in C: most connections are quiet most seconds)
                continue
            for ptype in PACKET_NAMES:  # only these are ever counted
                value = now[ptype]
                delta = value - seen[ptype]
                if delta:
                    pending[ptype] += delta
                    seen[ptype] = value

    def add_coding(self, conn: FSConnection) -> None:
        """Payload bytes next to their wire bytes, and compression's CPU time."""
        stats = conn.coding.stats
        now = (*conn.data_traffic(), stats.compress_seconds, stats.decompress_seconds)
        for i, value in enumerate(now):
            _CODING_PENDING[i] += value - self.coding_seen[i]
            self.coding_seen[i] = value

    def publish(self, conn: FSConnection) -> None:
        """``add``, then the counters now (a connection that ends)."""
        self.add(conn)
        flush_traffic()


_PENDING: list[list[int]] = [[0] * 256 for _ in range(4)]
_CODING_PENDING: list[float] = [0] * len(_CODING)


def flush_traffic() -> None:
    flush_coding()
    metrics = (RECEIVED_PACKETS, RECEIVED_BYTES, SENT_PACKETS, SENT_BYTES)
    for metric, pending in zip(metrics, _PENDING, strict=True):
        for ptype, name in PACKET_NAMES.items():
            if pending[ptype]:
                metric.labels(name).inc(pending[ptype])
                pending[ptype] = 0


def show_coding() -> None:
    """Export the compression counters at 0 from a worker's start (a dashboard's ratio is
    then 0/0 = no data, not a missing series, until the first payload)."""
    for direction in ("received", "sent"):
        PAYLOAD_BYTES.labels(direction)
        WIRE_BYTES.labels(direction)
    for operation in ("compress", "decompress"):
        COMPRESSION_SECONDS.labels("worker", operation)


def flush_coding() -> None:
    payload_in, wire_in, payload_out, wire_out, compress, decompress = _CODING_PENDING
    if not any(_CODING_PENDING):
        return
    for metric, label, value in (
        (PAYLOAD_BYTES, "received", payload_in), (PAYLOAD_BYTES, "sent", payload_out),
        (WIRE_BYTES, "received", wire_in), (WIRE_BYTES, "sent", wire_out),
    ):  # fmt: skip
        if value:
            metric.labels(label).inc(value)
    if compress:
        COMPRESSION_SECONDS.labels("worker", "compress").inc(compress)
    if decompress:
        COMPRESSION_SECONDS.labels("worker", "decompress").inc(decompress)
    _CODING_PENDING[:] = [0] * len(_CODING)
