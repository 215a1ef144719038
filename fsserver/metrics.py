"""``/metrics``: what every process published (see ``fsserver.telemetry``) and the store's
gauges, which only the supervisor knows."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from fsserver.store import StoreStats


class StoreCollector(Collector):
    def __init__(self, stats: StoreStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.stats
        yield GaugeMetricFamily("fs_store_capacity_bytes", "Arena capacity.", s.capacity_bytes)
        yield GaugeMetricFamily(
            "fs_store_used_bytes",
            "Arena bytes allocated (blobs and uploads in progress).",
            s.used_bytes,
        )
        yield GaugeMetricFamily(
            "fs_store_parked_bytes",
            "Of the bytes used: uploads cut short, kept to be resumed (given up when needed).",
            s.parked_bytes,
        )
        yield GaugeMetricFamily(
            "fs_store_dedup_saved_bytes",
            "Bytes not stored thanks to deduplication.",
            max(0, s.logical_bytes - s.blob_bytes),
        )
        yield GaugeMetricFamily("fs_store_files", "Files stored, over all shares.", s.files)
        yield GaugeMetricFamily("fs_store_shares", "Shares holding at least one file.", s.shares)


class PersistCollector(Collector):
    def __init__(self, stats: dict[str, float]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "fs_persist_waiting_bytes",
            "Bytes of new content not yet written to the data dir (--fsync interval or never: "
            "what a crash of the host could lose).",
            self.stats["waiting_bytes"],
        )
        yield GaugeMetricFamily(
            "fs_persist_pending_entries",
            "Store changes (journal entries) not yet applied to the data dir.",
            self.stats["pending_entries"],
        )


def render_metrics(stats: StoreStats, persist: dict[str, float] | None = None
                   ) -> tuple[bytes, str]:  # fmt: skip
    """Every process's metrics (their files in PROMETHEUS_MULTIPROC_DIR) and the store's."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry)
    registry.register(StoreCollector(stats))
    if persist is not None:
        registry.register(PersistCollector(persist))
    return generate_latest(registry), CONTENT_TYPE_LATEST
