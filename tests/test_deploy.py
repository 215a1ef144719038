"""deploy/: there is no Docker engine here, so the container's command runs as the container
would run it (its CMD, its ENV, its HEALTHCHECK, its STOPSIGNAL), and the compose and k8s
files are checked against the Dockerfile."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from common.errors import AuthError
from common.version import VERSION
from fsclient import Client
from fsclient.access import Access, TLSError
from fsserver.cli import config_from
from fsserver.config import parse_size
from tests.cli import fsclient
from tests.conftest import run
from tests.serverproc import METRICS, READY, ROOT, ServerLog, start_server, wait_for

DEPLOY = ROOT / "deploy"


class Dockerfile:
    """The instructions of the final stage, parsed the way Docker reads them."""

    def __init__(self, path: Path) -> None:
        text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continued lines
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
        last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
        self.stages = sum(1 for line in lines if line.upper().startswith("FROM "))
        self.final = lines[last_from:]
        self.env: dict[str, str] = {}
        self.expose: set[int] = set()
        self.volumes: set[str] = set()
        self.cmd: list[str] = []
        self.healthcheck: list[str] = []
        self.user = self.stopsignal = self.workdir = ""
        for line in self.final:
            word, _, rest = line.partition(" ")
            word = word.upper()
            if word == "ENV":
                self.env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
            elif word == "VOLUME":
                self.volumes |= set(rest.split())
            elif word == "EXPOSE":
                self.expose |= {int(port) for port in rest.split()}
            elif word == "CMD":
                self.cmd = json.loads(rest)
            elif word == "HEALTHCHECK":
                self.healthcheck = json.loads(rest[rest.index("CMD") + 3 :].strip())
            elif word == "USER":
                self.user = rest.strip()
            elif word == "WORKDIR":
                self.workdir = rest.strip()
            elif word == "STOPSIGNAL":
                self.stopsignal = rest.strip()


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(DEPLOY / "Dockerfile")


def test_dockerfile_has_what_operators_rely_on(dockerfile):
    assert dockerfile.stages == 2  # the project is built as a wheel, then installed
    assert any("pip install" in line and "wheels" in line for line in dockerfile.final)
    assert dockerfile.user and dockerfile.user != "root"
    assert dockerfile.expose == {7878, 9478}
    assert {int(dockerfile.env["FS_PORT"]), int(dockerfile.env["FS_METRICS_PORT"])} == {7878, 9478}
    assert dockerfile.stopsignal == "SIGTERM"
    assert dockerfile.env["FS_HOST"] == "0.0.0.0"
    assert {"FS_PORT", "FS_METRICS_PORT", "FS_STORE_SIZE", "FS_WORKERS"} <= dockerfile.env.keys()
    assert "/healthz" in " ".join(dockerfile.healthcheck)
    # listening on 0.0.0.0 needs tokens; the file sits in the image's own writable folder
    assert Path(dockerfile.env["FS_TOKENS"]).parent == Path(dockerfile.workdir)
    # the store is kept on a volume of its own, made durable before each answer
    assert dockerfile.env["FS_DATA_DIR"] in dockerfile.volumes
    assert dockerfile.env["FS_FSYNC"] == "always"


def test_the_project_builds_as_a_wheel(tmp_path):
    """From a copy of the tracked files, as the image's build stage has them: a build leaves
    build/ and *.egg-info behind, which must not land in the checkout (a stale build/lib
    could slip deleted modules into later wheels). The build backend warns of nothing (the
    verbose output shows its warnings, such as a deprecated form of ``project.license``)."""
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, tracked):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v",
         "--wheel-dir", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not re.findall(r".*\w+Warning: .*", result.stdout + result.stderr)
    assert [p.name for p in tmp_path.glob("fs_filesync-*.whl")]


def test_the_container_command_runs_as_is(dockerfile, tmp_path):
    """CMD with the image's ENV (the image installs the console script; so does make), in a
    folder standing in for the image's WORKDIR: without the tokens file it refuses to start,
    saying how to make one; the documented first step (``fsserver add-token NAME --share
    default`` with the image's ENV) makes it and prints the token, which then opens share
    'default'; no token opens nothing. Only the two ports are free ones instead of the image's
    (something here may hold 7878 and 9478, such as `make run`); the HEALTHCHECK reads its port
    from the ENV, so it gets the free one too."""
    tokens = tmp_path / Path(dockerfile.env["FS_TOKENS"]).name
    env = {**os.environ, **dockerfile.env, "FS_TOKENS": str(tokens), "FS_PORT": "0",
           "FS_DATA_DIR": str(tmp_path / "data"), "FS_METRICS_PORT": "0",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    bindir = Path(sys.executable).parent
    command = [str(bindir / dockerfile.cmd[0]), *dockerfile.cmd[1:]]  # (PYTHONPATH: this code)
    refused = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert refused.returncode == 2 and f"tokens file {tokens} does not exist" in refused.stderr
    assert not tokens.exists()
    add = [str(bindir / "fsserver"), "add-token", "laptop", "--share", "default"]
    made = subprocess.run(add, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    proc = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    log = ServerLog()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        ready = wait_for(lambda: log.find(READY) or proc.poll() is not None, 60,
                         "the container's server")  # fmt: skip
        assert proc.poll() is None, log.text()
        host, port = ready.group(1), ready.group(2)
        metrics = log.find(METRICS)
        assert metrics and host == metrics.group(1) == dockerfile.env["FS_HOST"]
        env["FS_METRICS_PORT"] = metrics.group(2)  # what the HEALTHCHECK reads
        health = subprocess.run([str(bindir / "python"), *dockerfile.healthcheck[1:]], env=env,
                                timeout=30)  # fmt: skip
        assert health.returncode == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.group(2)}/metrics") as resp:
            capacity = re.search(r"^fs_store_capacity_bytes (\S+)$", resp.read().decode(), re.M)
        assert capacity and float(capacity.group(1)) == parse_size(dockerfile.env["FS_STORE_SIZE"])
        roles = {"worker": int(dockerfile.env["FS_WORKERS"]),
                 "hasher": int(dockerfile.env["FS_HASH_WORKERS"])}  # fmt: skip
        wait_for(lambda: children(proc.pid) == roles, 30, "the workers and hashers")
        assert token not in tokens.read_text() and token not in log.text()  # only its hash

        async def upload(secret: str) -> int:
            access = Access(token=secret)
            async with await Client.connect(f"127.0.0.1:{port}", access=access) as client:
                return (await client.put_bytes(b"into the container", "hello.txt")).size

        assert run(upload(token)) == 18
        with pytest.raises(AuthError, match="needs a token"):
            run(upload(""))
        started = time.monotonic()
        proc.send_signal(getattr(signal, dockerfile.stopsignal))
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def children(pid: int) -> dict[str, int]:
    """How many workers and hashers the server runs (their process names say which)."""
    names = [child.name() for child in psutil.Process(pid).children(recursive=True)]
    return {role: sum(name.startswith(f"fs-{role}-") for name in names)
            for role in ("worker", "hasher")}  # fmt: skip


TLS_ENV = {"FS_TLS_CERT", "FS_TLS_KEY"}
"""What compose adds to the image's environment: TLS on by default."""


def test_compose_agrees_with_the_dockerfile(dockerfile):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    server = compose["services"]["fsserver"]
    assert server["build"]["dockerfile"] == "deploy/Dockerfile"
    published = {p.rsplit(":", 1)[0]: int(p.rsplit(":", 1)[1]) for p in server["ports"]}
    assert set(published.values()) == dockerfile.expose
    assert published["127.0.0.1:9478"] == 9478  # /metrics for this host only
    env = {k: str(v) for k, v in server["environment"].items()}
    assert env.keys() - TLS_ENV == {k for k in dockerfile.env if k.startswith("FS_")}
    assert {k: env[k] for k in env.keys() - TLS_ENV} == {
        k: v for k, v in dockerfile.env.items() if k.startswith("FS_")}  # fmt: skip
    assert Path(env["FS_TLS_CERT"]).parent.parent == Path(dockerfile.workdir)  # on the volume
    shm = parse_size(server["shm_size"].upper().replace("M", "MiB").replace("G", "GiB"))
    assert shm > parse_size(env["FS_STORE_SIZE"])
    assert server["stop_signal"] == dockerfile.stopsignal
    assert any(v.endswith(f":{env['FS_DATA_DIR']}") for v in server["volumes"])  # a volume
    prom = compose["services"]["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [
        f"fsserver:{env['FS_METRICS_PORT']}"
    ]
    grafana = compose["services"]["grafana"]
    assert any("fs-dashboard.json" in volume for volume in grafana["volumes"])
    assert grafana["environment"]["GF_SECURITY_ADMIN_USER"] == "admin"
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert "docker compose -f deploy/docker-compose.yml logs fsserver" in text
    assert 'user "admin", password $GRAFANA_ADMIN_PASSWORD' in text
    assert all(p.startswith("127.0.0.1:") for s in ("prometheus", "grafana")
               for p in compose["services"][s]["ports"])  # fmt: skip


def test_kubernetes_agrees_with_the_dockerfile(dockerfile):
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "k8s" / "service.yaml").read_text())
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == dockerfile.expose
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {k: v for k, v in dockerfile.env.items() if k.startswith("FS_")}
    [shm] = [v for v in pod["spec"]["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    limit = parse_size(shm["emptyDir"]["sizeLimit"].replace("Mi", "MiB").replace("Gi", "GiB"))
    assert limit > parse_size(env["FS_STORE_SIZE"])
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    [tokens] = [v for v in container["volumeMounts"] if v["name"] == "tokens"]
    assert Path(env["FS_TOKENS"]).parent == Path(tokens["mountPath"])
    assert [v["secret"] for v in pod["spec"]["volumes"] if v["name"] == "tokens"]
    [data] = [v for v in container["volumeMounts"] if v["name"] == "data"]
    assert data["mountPath"] == env["FS_DATA_DIR"]
    [claim] = [v for v in pod["spec"]["volumes"] if v["name"] == "data"]
    pvc = yaml.safe_load((DEPLOY / "k8s" / "pvc.yaml").read_text())
    assert claim["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == env["FS_METRICS_PORT"]
    assert container["image"] == f"fsserver:{project_version()}"  # a release, pulled once
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {p["port"] for p in service["spec"]["ports"]} == dockerfile.expose
    others = [yaml.safe_load(f.read_text()) for f in (DEPLOY / "k8s").glob("*.yaml")]
    scraped = [o["kind"] for o in others if "prometheus.io/scrape" in str(o)]
    assert scraped == ["Deployment"]  # one object only: the Pod, not also its Service
    text = (DEPLOY / "k8s" / "deployment.yaml").read_text()
    assert "kubectl create secret generic fs-tokens --from-file=tokens.toml" in text
    assert "FS_METRICS_TOKEN_FILE" in text  # the example of a token on /metrics
    public = yaml.safe_load((DEPLOY / "k8s" / "service-public.yaml").read_text())
    assert public["spec"]["type"] == "LoadBalancer"
    assert public["spec"]["selector"] == service["spec"]["selector"]
    assert [p["port"] for p in public["spec"]["ports"]] == [int(env["FS_PORT"])]  # no metrics
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose["services"]["fsserver"]["image"] == container["image"]


def project_version() -> str:
    """The version pyproject.toml takes from ``common.version`` (``dynamic``)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "common.version.VERSION"}
    return VERSION


def test_the_compose_command_turns_tls_on(tmp_path):
    """The compose service's command, as the container runs it (its ENV, paths moved into a
    temp folder): the log gives the TLS fingerprint and the first token, which together open
    the share; a client that does not pin the certificate is refused."""
    service = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["fsserver"]
    config = tmp_path / "fs"

    def moved(text: str) -> str:
        return text.replace("/var/lib/fs-data", str(tmp_path / "data")).replace(
            "/var/lib/fs", str(config))  # fmt: skip

    env = {**os.environ, **{k: moved(str(v)) for k, v in service["environment"].items()},
           "FS_PORT": "0", "FS_METRICS_PORT": "0", "FS_HOST": "127.0.0.1",
           "FS_STORE_SIZE": "16MiB", "FS_WORKERS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    config.mkdir()
    command = [moved(arg).replace("$$", "$") for arg in service["command"]]
    proc = subprocess.Popen(
        command, env=env, cwd=config, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    log = ServerLog()
    threading.Thread(target=lambda: log.lines.extend(proc.stdout or ()), daemon=True).start()
    try:
        ready = wait_for(lambda: log.find(READY) or proc.poll() is not None, 60, "the server")
        assert proc.poll() is None, log.text()
        fingerprint = re.search(r"fsserver TLS fingerprint: ([0-9a-f]{64})", log.text())
        token = re.search(r"token for share 'default': (\S+)", log.text())
        assert fingerprint and token, log.text()

        async def upload(access: Access) -> int:
            async with await Client.connect(f"127.0.0.1:{ready.group(2)}",
                                            access=access) as client:  # fmt: skip
                return (await client.put_bytes(b"over TLS", "tls.txt")).size

        pinned = Access(token=token.group(1), tls_fingerprint=fingerprint.group(1))
        assert run(upload(pinned)) == 8
        with pytest.raises(TLSError, match="certificate"):
            run(upload(Access(token=token.group(1), tls=True)))  # self-signed: not trusted
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


SYSTEMD = DEPLOY / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(SYSTEMD / name)
    return parser


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """No unknown key, no bad value, an executable ExecStart (fsserver where this checkout
    installs it, instead of /usr/local/bin), for the template as for one of its instances."""
    bindir = Path(sys.executable).parent
    server = (SYSTEMD / "fsserver.service").read_text()
    assert "ExecStart=/usr/local/bin/fsserver " in server
    (tmp_path / "fsserver.service").write_text(
        server.replace("/usr/local/bin/fsserver", str(bindir / "fsserver")))  # fmt: skip
    template = (SYSTEMD / "fsclient-sync@.service").read_text()
    (tmp_path / "fsclient-sync@.service").write_text(template)
    (tmp_path / "fsclient-sync@home-me-Documents.service").write_text(template)
    for name in ("fsserver.service", "fsclient-sync@.service",
                 "fsclient-sync@home-me-Documents.service"):  # fmt: skip
        result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_fsserver_unit_runs_a_valid_hardened_server():
    """Its ExecStart options and Environment are ones fsserver takes (the config they give is
    valid), the data dir lies in the unit's own StateDirectory, and it is hardened."""
    service = unit("fsserver.service")["Service"]
    program, *args = shlex.split(service["ExecStart"])
    assert program == "/usr/local/bin/fsserver"
    env = dict(pair.split("=", 1) for pair in shlex.split(service["Environment"]))
    config = config_from(args, env)
    state = [f"/var/lib/{d}" for d in service["StateDirectory"].split()]
    assert config.data_dir in state and str(Path(config.tokens).parent) in state
    assert config.fsync == "always" and config.host == "127.0.0.1"  # loopback unless told
    help_text = subprocess.run([str(Path(sys.executable).parent / "fsserver"), "--help"],
                               capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    assert all(arg in help_text for arg in args if arg.startswith("--"))
    hardening = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                 "PrivateTmp": "yes", "DynamicUser": "yes", "CapabilityBoundingSet": "",
                 "KillSignal": "SIGTERM"}  # fmt: skip
    assert {k: service.get(k) for k in hardening} == hardening


def test_the_fsserver_unit_makes_the_tokens_file_once(tmp_path):
    """fsserver refuses a missing tokens file: the unit's ExecStartPre makes it at the first
    start, logging a token that then opens share default, and leaves it alone later."""
    service = unit("fsserver.service")["Service"]
    bindir = Path(sys.executable).parent
    line = (service["ExecStartPre"].replace("/usr/local/bin/fsserver", str(bindir / "fsserver"))
            .replace("/var/lib/fs", str(tmp_path)).replace("$$", "$"))  # fmt: skip
    first = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=60)
    token = re.search(r"token for share default: (\S+)", first.stdout)
    assert first.returncode == 0 and token, first.stdout + first.stderr
    tokens = tmp_path / "tokens.toml"
    made = tokens.read_text()
    assert 'name = "first"' in made
    again = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == "" and tokens.read_text() == made
    server = start_server("--tokens", str(tokens), "--workers", "1", "--hash-workers", "1",
                          "--store-size", "16MiB")  # fmt: skip
    try:
        assert fsclient("ls", "--token", token.group(1), server=server).returncode == 0
        assert fsclient("ls", "--token", "wrong", server=server).returncode != 0
    finally:
        server.stop()


def test_the_sync_unit_command_syncs_the_folder(server, tmp_path):
    """The template's ExecStart, with %f a real folder and the settings its EnvironmentFile
    would give: the folder's file reaches the server (``--once`` added to end the run)."""
    service = unit("fsclient-sync@.service")["Service"]
    folder = tmp_path / "Documents"
    folder.mkdir()
    (folder / "notes.txt").write_text("synced by the unit's command\n")
    words = shlex.split(service["ExecStart"].replace("%f", str(folder)))
    assert words[:3] == ["/usr/bin/env", "fsclient", "sync"] and words[-1] == str(folder)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "FS_SERVER": server.address, "FS_SHARE": "default",
           "PATH": f"{bindir}:{os.environ['PATH']}"}  # fmt: skip
    result = subprocess.run([*words[:-1], "--once", words[-1]], env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr

    async def listed() -> list[str]:
        async with await Client.connect(server.address) as client:
            return [entry.path for entry in await client.ls()]

    assert "notes.txt" in run(listed())
    assert service["KillSignal"] == "SIGINT" and "130" in service["SuccessExitStatus"]
    assert unit("fsclient-sync@.service")["Install"]["WantedBy"] == "default.target"
