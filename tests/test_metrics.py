"""Metrics: a real Prometheus scrapes a real server; promtool accepts what we export and
ship; metrics stay right when a worker dies; the Grafana dashboard only asks for what exists."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from fsclient import Client
from tests.conftest import run
from tests.serverproc import ROOT, free_port, wait_for

DEPLOY = ROOT / "deploy"
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
    def __init__(self, tmp: Path, target: str) -> None:
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [target]  # only change
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
    server = server_factory("--workers", "2", "--hash-workers", "2", "--store-size", "64MiB")
    prom = Prometheus(tmp_path, f"127.0.0.1:{server.metrics_port}")
    try:
        files = {f"f{n}.bin": os.urandom(5000 + 3000 * n) for n in range(12)}
        wire = upload_4k(server, files)
        wait_for(lambda: prom.value('up{job="fsserver"}') == 1.0, 30, "Prometheus to scrape")
        data = 'sum(fs_received_bytes_total{packet_type="file_sync_data"})'
        wait_for(lambda: prom.value(data) == wire, 30, f"{wire} received bytes in Prometheus")
        series = prom.query("fs_process_resident_memory_bytes")
        seen = {(s["metric"]["role"], s["metric"]["index"]) for s in series}
        assert seen == {("acceptor", "0"), ("worker", "0"), ("worker", "1"), ("hasher", "0"),
                        ("hasher", "1")}  # fmt: skip
        assert all(float(s["value"][1]) > 0 for s in series)
        ok = prom.value('sum(fs_sync_sessions_total{direction="upload",outcome="ok"})')
        assert ok == len(files)
    finally:
        prom.stop()


@needs_prometheus
def test_promtool_accepts_metrics_rules_and_config(server):
    upload_4k(server, {"x.bin": os.urandom(10_000)})
    status, body = server.http_get("/metrics")
    assert status == 200
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
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
        rss = [k for k in samples if k.startswith("fs_process_resident_memory_bytes{")]
        return samples if len([k for k in rss if 'role="worker"' in k]) == 2 else None

    samples = wait_for(settled, 10, "the new worker's gauges")
    assert samples[key] == wire  # counted once, not lost with the process, not doubled
    assert not [k for k in samples if f'pid="{victim.pid}"' in k]
    assert samples['fs_restarts_total{role="worker"}'] == 1.0
    assert samples['fs_sync_sessions_total{direction="upload",outcome="ok"}'] == len(files)


def test_dashboard_asks_only_for_metrics_that_exist(server):
    wire = upload_4k(server, {"x.bin": os.urandom(10_000)})
    dashboard = json.loads((DEPLOY / "grafana" / "fs-dashboard.json").read_text())
    asked = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            asked |= set(re.findall(r"\b(fs_[a-z_]+)", target["expr"]))
    assert asked, "the dashboard queries nothing"

    def exported() -> set[str]:
        return {re.sub(r"\{.*", "", key) for key in parse_metrics(server.http_get("/metrics")[1])}

    def published() -> bool:
        """Every process has sampled itself, and the worker has counted the upload."""
        samples = parse_metrics(server.http_get("/metrics")[1])
        rss = {k for k in samples if k.startswith("fs_process_resident_memory_bytes{")}
        counted = samples.get('fs_received_bytes_total{packet_type="file_sync_data"}') == wire
        return len(rss) == 4 and counted  # the acceptor, 2 workers and the hasher

    wait_for(published, 10, "the first samples of every process")
    missing = sorted(asked - exported())
    assert not missing, f"the dashboard queries metrics that /metrics lacks: {missing}"
    exported_now = exported()
    for rule_group in yaml.safe_load((DEPLOY / "prometheus-rules.yml").read_text())["groups"]:
        for rule in rule_group["rules"]:
            for name in re.findall(r"\b(fs_[a-z_]+)", rule["expr"]):
                assert name in exported_now, f"alert {rule['alert']} uses unknown {name}"
