"""The link suite's data: a log-like text file, a tree of real source text, random bytes.

They span what stream compression meets: the log compresses well but not trivially (zstd -3
about 5-10x: timestamps, levels and templates repeat, ids, numbers and addresses do not), the
Python standard library's source is ordinary text in ordinary folders (about 3-4x), and random
bytes do not compress at all (compression must cost no time there).
"""

from __future__ import annotations

import os
import random
import shutil
import sysconfig
from pathlib import Path

from bench.data import file_digest

MiB = 1 << 20
LEVELS = ["DEBUG"] * 3 + ["INFO"] * 12 + ["WARN"] * 2 + ["ERROR"]
SERVICES = ["api-gateway", "auth", "billing", "catalog", "checkout", "search", "inventory",
            "notifier", "scheduler", "uploader"]  # fmt: skip
METHODS = ["GET"] * 6 + ["POST"] * 2 + ["PUT", "DELETE"]
PATHS = ["/api/v1/orders/{n}", "/api/v1/users/{n}/profile", "/api/v2/search?q=item{n}",
         "/static/app.{h}.js", "/api/v1/cart/{n}/items", "/healthz",
         "/api/v1/invoices/{n}.pdf"]  # fmt: skip
STATUS = [200] * 20 + [201, 204, 301, 304, 400, 401, 403, 404, 404, 409, 429, 500, 502, 503]
AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.4 Safari/605.1.15",
          "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
          "okhttp/4.12.0", "python-requests/2.31.0", "curl/8.5.0"]  # fmt: skip
EVENTS = [
    'request method={m} path="{p}" status={s} latency_ms={l:.1f} bytes={b} user={u} ua="{ua}"',
    "session cache {hit} for key=session:{h} (ttl={t}s, store=redis-primary)",
    "db query on table {tbl} returned {r} rows in {l:.2f} ms (pool=main, replica=false)",
    "background job {j} finished in {l:.0f} ms: {r} items processed, 0 skipped",
    "accepted connection from {ip}:{port} (tls=1.3, cipher=TLS_AES_128_GCM_SHA256)",
    "retrying upstream call to {svc} (attempt {a}/5): deadline exceeded after {t}s",
    "user {u} logged in from {ip} using password authentication, mfa=totp",
]
TABLES = ["orders", "users", "sessions", "invoices", "items", "events"]


def _line(rnd: random.Random, ts_ms: int, req: int) -> str:
    sec, ms = divmod(ts_ms, 1000)
    mins, s = divmod(sec, 60)
    hours, m = divmod(mins, 60)
    stamp = f"2024-05-{17 + hours // 24:02d}T{hours % 24:02d}:{m:02d}:{s:02d}.{ms:03d}Z"
    n, h = rnd.randrange(5000), f"{rnd.randrange(2000) * 2654435761 % (1 << 48):012x}"
    msg = rnd.choice(EVENTS).format(
        m=rnd.choice(METHODS), p=rnd.choice(PATHS).format(n=n, h=h[:8]), s=rnd.choice(STATUS),
        l=rnd.expovariate(0.1), b=rnd.randrange(100, 60_000, 64), u=rnd.randrange(3000),
        hit=rnd.choice(("hit", "hit", "miss")), h=h, t=rnd.choice((30, 60, 300, 3600)),
        tbl=rnd.choice(TABLES), r=rnd.randrange(1, 500), j=f"job-{rnd.randrange(10_000)}",
        ip=f"10.{(c := rnd.randrange(300)) % 4}.{c * 37 % 256}.{c * 11 % 254 + 1}",
        port=rnd.randrange(32768, 61000), svc=rnd.choice(SERVICES), a=rnd.randrange(1, 6),
        ua=rnd.choice(AGENTS),
    )  # fmt: skip
    level, svc = rnd.choice(LEVELS), rnd.randrange(len(SERVICES))
    return (f"{stamp} {level:<5} [{SERVICES[svc]}] pid={1000 + 7 * svc + rnd.randrange(2)} "
            f"req={req * 40503 % (1 << 32):08x} {msg}\n")  # fmt: skip


def write_log(path: Path, size: int, seed: int = 14) -> None:
    """Exactly *size* bytes of log lines (the last one cut short), the same for a given seed."""
    rnd = random.Random(seed)
    ts, req, left = 0, 0, size
    with open(path, "w", encoding="ascii", newline="\n") as f:
        while left > 0:
            lines = []
            for _ in range(2000):
                ts += rnd.randrange(0, 4)
                req += rnd.random() < 0.4  # a request logs a few lines
                lines.append(_line(rnd, ts, req))
            block = "".join(lines)[:left]
            f.write(block)
            left -= len(block)


def write_random(path: Path, size: int) -> None:
    with open(path, "wb", buffering=0) as f:
        left = size
        while left:
            chunk = os.urandom(min(8 * MiB, left))
            f.write(chunk)
            left -= len(chunk)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def copy_stdlib(dst: Path) -> None:
    """Every ``.py`` file of the running interpreter's standard library, folders kept
    (third-party ``site-packages`` and ``__pycache__`` left out)."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    src = stdlib_root()
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        rel = Path(dirpath).relative_to(src)
        wanted = [name for name in filenames if name.endswith(".py")]
        if wanted:
            (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in wanted:
            shutil.copyfile(Path(dirpath) / name, dst / rel / name)


def digests(root: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (size, XXH3-128 hex) of every file below *root* (or of *root* itself,
    keyed by its name)."""
    if root.is_file():
        return {root.name: (root.stat().st_size, file_digest(root).hex())}
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and ".fsync" not in path.relative_to(root).parts:
            found[str(path.relative_to(root))] = (path.stat().st_size, file_digest(path).hex())
    return found
