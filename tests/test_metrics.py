"""Metrics: a real Prometheus scrapes a real server; promtool accepts what we export and
ship; metrics stay right when a worker dies; the Grafana dashboard only asks for what exists."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from common import messages as m
from common.errors import ErrorCode, FSError
from common.limits import ANY_VERSION
from common.version import package_version
from fsclient import Client
from fsserver.telemetry import PER_PROCESS
from tests.conftest import run
from tests.rawclient import RawClient
from tests.serverproc import ROOT, eventually, free_port, wait_for

DEPLOY = ROOT / "deploy"
METRIC_NAME = r"\b((?:fs|process)_[a-z_]+)"
needs_prometheus = pytest.mark.skipif(
    not shutil.which("prometheus"), reason="Debian package prometheus (make test installs it)"
)


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample line."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def upload_4k(server, files: dict[str, bytes]) -> int:
    """Upload with the seed's packets; returns the FileSyncData bytes that crossed the wire."""

    async def main() -> None:
        async with await Client.connect(server.address, max_packet=4096) as client:
            for name, data in files.items():
                await client.put_bytes(data, name)

    run(main())
    return sum(len(d) + 9 * math.ceil(len(d) / 4087) for d in files.values())


class Prometheus:
    def __init__(self, tmp: Path, target: str, token_file: Path | None = None) -> None:
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        job = config["scrape_configs"][0]
        job["static_configs"][0]["targets"] = [target]
        if token_file is not None:  # what the commented example in prometheus.yml says
            job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        shutil.copy(DEPLOY / "prometheus-rules.yml", tmp)  # its rule_files path is relative
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.load(resp)["data"]["result"]
        except OSError:
            return []

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@needs_prometheus
def test_real_prometheus_scrapes_the_server(server_factory, tmp_path):
    """With a bearer token on /metrics, sent by Prometheus' ``authorization`` setting."""
    token = tmp_path / "metrics-token"
    token.write_text("s3cret-scrape-token\n")
    server = server_factory("--workers", "2", "--hash-workers", "2", "--store-size", "64MiB",
                            "--metrics-token-file", str(token))  # fmt: skip
    assert server.http_get("/metrics")[0] == 401
    prom = Prometheus(tmp_path, f"127.0.0.1:{server.metrics_port}", token)
    try:
        files = {f"f{n}.bin": os.urandom(5000 + 3000 * n) for n in range(12)}
        wire = upload_4k(server, files)
        wait_for(lambda: prom.value('up{job="fsserver"}') == 1.0, 30, "Prometheus to scrape")
        data = 'sum(fs_received_bytes_total{packet_type="file_sync_data"})'
        wait_for(lambda: prom.value(data) == wire, 30, f"{wire} received bytes in Prometheus")
        series = prom.query("process_resident_memory_bytes")
        seen = {(s["metric"]["role"], s["metric"]["index"]) for s in series}
        assert seen == {("acceptor", "0"), ("worker", "0"), ("worker", "1"), ("hasher", "0"),
                        ("hasher", "1")}  # fmt: skip
        assert all(float(s["value"][1]) > 0 for s in series)
        ok = prom.value('sum(fs_sync_sessions_total{direction="upload",outcome="ok"})')
        assert ok == len(files)
        assert prom.value("count(fs_build_info)") == 1.0
        assert prom.value('count(process_cpu_seconds_total{role="worker"})') == 2.0
    finally:
        prom.stop()


@needs_prometheus
def test_promtool_accepts_metrics_rules_and_config(server):
    """Every metric, each with samples (a refusal, a listing, a download), passes promtool's
    lint with no warning at all."""
    upload_4k(server, {"x.bin": os.urandom(10_000)})
    exercise(server)
    wait_for(
        lambda: (
            server.metric_total("fs_subscribers") == 0
            and server.metric_total("fs_connections_active") == 0
        ),
        10,
        "the last samples",
    )
    status, body = server.http_get("/metrics")
    assert status == 200
    for name in (
        "fs_refusals_total",
        "fs_list_duration_seconds_bucket",
        "fs_share_files",
        "fs_download_duration_seconds_bucket",
        "fs_build_info",
    ):
        assert f"\n{name}{{" in body, name
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout + check.stderr == ""  # no warning either
    rules = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus-rules.yml")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=DEPLOY,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert config.returncode == 0, config.stdout + config.stderr


def test_metrics_stay_right_when_a_worker_dies(server_factory):
    server = server_factory("--workers", "2", "--store-size", "32MiB")
    files = {f"f{n}.bin": os.urandom(20_000) for n in range(8)}
    wire = upload_4k(server, files)
    key = 'fs_received_bytes_total{packet_type="file_sync_data"}'
    wait_for(lambda: parse_metrics(server.http_get("/metrics")[1]).get(key) == wire, 10,
             "the uploads in /metrics")  # fmt: skip
    victim = server.kill_child("worker-0")
    wait_for(lambda: server.http_get("/readyz")[0] == 200, 10, "a replacement worker")

    def settled() -> dict[str, float] | None:
        samples = parse_metrics(server.http_get("/metrics")[1])
        rss = [k for k in samples if k.startswith("process_resident_memory_bytes{")]
        return samples if len([k for k in rss if 'role="worker"' in k]) == 2 else None

    cpu = 'process_cpu_seconds_total{index="0",role="worker"}'
    before = parse_metrics(server.http_get("/metrics")[1])[cpu]
    samples = wait_for(settled, 10, "the new worker's gauges")
    assert victim.pid and samples[key] == wire  # counted once, not lost, not doubled
    assert not [k for k in samples if "pid=" in k]  # the same series go on
    assert samples['fs_restarts_total{index="0",role="worker"}'] == 1.0
    assert samples['fs_restarts_total{index="1",role="worker"}'] == 0.0
    assert samples[cpu] >= before  # a counter: the dead process's CPU time stays in it
    assert samples['fs_sync_sessions_total{direction="upload",outcome="ok"}'] == len(files)


def test_dashboard_asks_only_for_metrics_that_exist(server):
    exercise(server)
    wire = upload_4k(server, {"x.bin": os.urandom(10_000)})
    dashboard = json.loads((DEPLOY / "grafana" / "fs-dashboard.json").read_text())
    asked = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            asked |= set(re.findall(METRIC_NAME, target["expr"]))
    assert asked, "the dashboard queries nothing"

    def exported() -> set[str]:
        return {re.sub(r"\{.*", "", key) for key in parse_metrics(server.http_get("/metrics")[1])}

    def published() -> bool:
        """Every process has sampled itself, and the worker has counted the upload."""
        samples = parse_metrics(server.http_get("/metrics")[1])
        rss = {k for k in samples if k.startswith("process_resident_memory_bytes{")}
        counted = samples.get('fs_received_bytes_total{packet_type="file_sync_data"}', 0) >= wire
        return len(rss) == 4 and counted  # the acceptor, 2 workers and the hasher

    wait_for(published, 10, "the first samples of every process")
    missing = sorted(asked - exported())
    assert not missing, f"the dashboard queries metrics that /metrics lacks: {missing}"
    exported_now = exported()
    for rule_group in yaml.safe_load((DEPLOY / "prometheus-rules.yml").read_text())["groups"]:
        for rule in rule_group["rules"]:
            for name in re.findall(METRIC_NAME, rule["expr"]):
                assert name in exported_now, f"alert {rule['alert']} uses unknown {name}"


def exercise(server) -> None:
    """A listing, a download, a live subscriber and a refusal (a path the server rejects)."""

    async def main() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(b"listed and fetched", "seen.txt")
            assert [e.path for e in await client.ls()]
            with tempfile.TemporaryDirectory() as tmp:
                await client.get("seen.txt", os.path.join(tmp, "copy"))
            async with await Client.connect(server.address) as follower:
                await follower.subscribe()
                await eventually(lambda: server.metric_total("fs_subscribers") == 1, 10,
                                 "the subscriber in /metrics")  # fmt: skip

    run(main())
    raw = RawClient(server.address)
    try:
        raw.send(m.FileSyncInit(1, 4, 0, 0o644, ANY_VERSION, None, "../escape"))
        assert raw.expect(m.Error).code == ErrorCode.INVALID_PATH
    finally:
        raw.close()


def test_every_per_process_metric_has_role_and_index(server_factory, tmp_path):
    """One label scheme: each per-process metric has a series per process, named by role and
    index; no metric has a pid (or the old worker) label."""
    server = server_factory("--workers", "2", "--hash-workers", "1", "--store-size", "32MiB",
                            "--data-dir", str(tmp_path / "data"))  # fmt: skip
    exercise(server)
    processes = {("acceptor", "0"), ("worker", "0"), ("worker", "1"), ("hasher", "0"),
                 ("persister", "0")}  # fmt: skip
    workers = {("worker", "0"), ("worker", "1")}
    expected = {name: processes for name in PER_PROCESS}
    expected |= {"fs_connections": {("worker", "0")},
                 "fs_connections_active": {("worker", "0")}, "fs_subscribers": workers,
                 "fs_restarts": processes - {("acceptor", "0")},
                 "fs_process_event_loop_lag_seconds": {("acceptor", "0"), *workers}}  # fmt: skip

    def families() -> dict[str, set[tuple[str, str]]] | None:
        found: dict[str, set[tuple[str, str]]] = {}
        for family in text_string_to_metric_families(server.http_get("/metrics")[1]):
            for sample in family.samples:
                assert not {"pid", "worker"} & sample.labels.keys(), sample
                if family.name in PER_PROCESS:
                    assert {"role", "index"} <= sample.labels.keys(), sample
                    found.setdefault(family.name, set()).add(
                        (sample.labels["role"], sample.labels["index"])
                    )
                else:
                    assert "index" not in sample.labels, sample
        return found if found.keys() == PER_PROCESS and found["fs_subscribers"] == workers \
            else None  # fmt: skip

    found = wait_for(families, 10, "every process's first samples")
    for name, pairs in expected.items():
        assert pairs <= found[name], name  # (connections: only the workers that had one)
        assert {role for role, _ in found[name]} <= {role for role, _ in processes}, name


def test_new_metrics_move(server_factory):
    """The arena's free space, per-share files and bytes, refusals by reason, a cancelled
    upload, a listing and a download all show in /metrics as they happen."""
    server = server_factory("--store-size", "32MiB", "--share-quota", "3MiB")
    free = server.metric("fs_store_free_bytes")
    assert server.metric("fs_store_largest_free_extent_bytes") == free > 30 << 20
    assert server.metric("fs_share_quota_bytes") == 3 << 20
    build = [k for k in parse_metrics(server.http_get("/metrics")[1]) if "fs_build_info" in k]
    assert build == [f'fs_build_info{{python="{platform.python_version()}",'
                     f'version="{package_version()}"}}']  # fmt: skip

    async def main() -> None:
        async with await Client.connect(server.address, "photos") as client:
            await client.put_bytes(os.urandom(1 << 20), "a.bin")
            await client.put_bytes(os.urandom(1 << 20), "b.bin")
            with pytest.raises(FSError, match="quota"):
                await client.put_bytes(os.urandom(2 << 20), "c.bin")
            await client.ls()
            with tempfile.TemporaryDirectory() as tmp:
                await client.get("a.bin", os.path.join(tmp, "copy"))

    run(main())
    assert server.metric('fs_share_files{share="photos"}') == 2
    assert server.metric('fs_share_bytes{share="photos"}') == 2 << 20
    assert server.metric("fs_store_free_bytes") <= free - (2 << 20)
    assert server.metric("fs_store_largest_free_extent_bytes") <= free - (2 << 20)
    assert server.metric('fs_refusals_total{reason="quota"}') == 1
    assert server.metric('fs_refusals_total{reason="no_space"}') == 0
    assert server.metric("fs_list_duration_seconds_count") == 1
    assert server.metric("fs_download_duration_seconds_count") == 1
    assert server.metric("fs_upload_duration_seconds_count") == 2

    raw = RawClient(server.address, share="photos")  # an upload accepted, then cancelled
    try:
        raw.send(m.FileSyncInit(7, 1 << 20, 0, 0o644, ANY_VERSION, None, "gone.bin"))
        assert raw.expect(m.FileSyncInitResponse).status == m.InitStatus.ACCEPTED
        raw.send(m.FileSyncCancel(7))
        cancelled = 'fs_sync_sessions_total{direction="upload",outcome="cancelled"}'
        wait_for(lambda: server.metric(cancelled, 0.0) == 1, 10, "the cancel in /metrics")
    finally:
        raw.close()
    assert server.metric('fs_sync_sessions_total{direction="upload",outcome="error"}', 0) == 0
    assert server.metric("fs_upload_duration_seconds_count") == 2  # not a finished upload
    assert server.metric('fs_refusals_total{reason="invalid_path"}') == 0
    exercise(server)  # its bad path is counted apart from the quota
    assert server.metric('fs_refusals_total{reason="invalid_path"}') == 1
    assert server.metric('fs_refusals_total{reason="quota"}') == 1
