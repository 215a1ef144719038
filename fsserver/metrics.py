"""``/metrics``: what every process published (see ``fsserver.telemetry``), the store's
gauges, which only the supervisor knows, and ``fs_build_info``."""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from common.version import package_version
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
        yield GaugeMetricFamily("fs_store_free_bytes", "Arena bytes free.", s.free_bytes)
        yield GaugeMetricFamily(
            "fs_store_largest_free_extent_bytes",
            "The largest free extent of the arena: the largest upload that fits now (the free "
            "bytes may be split into smaller pieces).",
            s.largest_free_bytes,
        )
        yield GaugeMetricFamily(
            "fs_share_quota_bytes", "Bytes one share may hold (--share-quota; 0: no quota).",
            s.share_quota,
        )  # fmt: skip
        files = GaugeMetricFamily("fs_share_files", "Files stored in each share.", labels=["share"])
        size = GaugeMetricFamily(
            "fs_share_bytes", "Logical bytes of each share's files (what its quota counts).",
            labels=["share"],
        )  # fmt: skip
        kept = GaugeMetricFamily(
            "fs_share_kept_versions", "Earlier versions kept in each share (--keep-versions).",
            labels=["share"],
        )  # fmt: skip
        kept_size = GaugeMetricFamily(
            "fs_share_kept_bytes", "Logical bytes of each share's kept versions (they count "
            "against its quota too).", labels=["share"],
        )  # fmt: skip
        for share, count, nbytes, versions, versions_bytes in s.per_share:
            files.add_metric([share], count)
            size.add_metric([share], nbytes)
            kept.add_metric([share], versions)
            kept_size.add_metric([share], versions_bytes)
        yield from (files, size, kept, kept_size)


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


class BuildInfo(Collector):
    """``fs_build_info{version="..."} 1``: which release runs (join on it in queries)."""

    def __init__(self) -> None:
        self.labels = {"version": package_version(), "python": platform.python_version()}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily("fs_build_info", "The server's version; always 1.",
                                 labels=list(self.labels))  # fmt: skip
        info.add_metric(list(self.labels.values()), 1)
        yield info


BUILD_INFO = BuildInfo()


def render_metrics(stats: StoreStats, persist: dict[str, float] | None = None
                   ) -> tuple[bytes, str]:  # fmt: skip
    """Every process's metrics (their files in PROMETHEUS_MULTIPROC_DIR) and the store's."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry)
    registry.register(StoreCollector(stats))
    registry.register(BUILD_INFO)
    if persist is not None:
        registry.register(PersistCollector(persist))
    return generate_latest(registry), CONTENT_TYPE_LATEST
