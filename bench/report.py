"""Results: rates from timings, the table, the targets, the machine, and docs/PERFORMANCE.md.

The document is shared with other benchmarks: this writer only replaces the text between
``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` (appending the section if it is
missing, creating the file with a short intro if there is none).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MB = 1_000_000
DOC_INTRO = """# FS performance

Measured with `python -m bench` (`make bench`), which rewrites the sections between its
`<!-- bench:...:start/end -->` markers and leaves the rest of this file alone.
Rates are in MB/s (10^6 bytes per second) or files per second; higher is better.
"""


@dataclass
class Series:
    label: str
    unit: str
    """``"MB/s"`` (amount is bytes) or ``"files/s"`` (amount is files)."""
    amount: float
    seconds: list[float] = field(default_factory=list)

    def rates(self) -> list[float]:
        scale = MB if self.unit == "MB/s" else 1
        return [self.amount / scale / s for s in self.seconds if s > 0]

    @property
    def best(self) -> float:
        return max(self.rates(), default=0.0)

    @property
    def median(self) -> float:
        rates = self.rates()
        return statistics.median(rates) if rates else 0.0


@dataclass(frozen=True)
class Target:
    label: str
    fs: str
    baseline: str
    minimum: float


TARGETS = [
    Target("(a) negotiated packets: upload / raw TCP", "fs_up_max", "raw", 0.5),
    Target("(a) negotiated packets: download / raw TCP", "fs_down_max", "raw", 0.5),
    Target("(b) 4096-B packets: upload / rsync upload", "fs_up_4k", "rsync_up", 1.5),
    Target("(b) 4096-B packets: download / rsync download", "fs_down_4k", "rsync_down", 1.5),
    Target("(c) small files: FS / rsync files/s", "fs_small", "rsync_small", 1.0),
]


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def results_table(results: dict[str, Series]) -> list[str]:
    lines = [
        "| Measurement | Best | Median | Unit | Runs (s) |",
        "|---|---:|---:|---|---|",
    ]
    for s in results.values():
        runs = ", ".join(f"{t:.3f}" for t in s.seconds)
        lines.append(f"| {s.label} | {_fmt(s.best)} | {_fmt(s.median)} | {s.unit} | {runs} |")
    return lines


def ratio_table(results: dict[str, Series]) -> tuple[list[str], bool]:
    """The FS/baseline ratios (of best rates, median ratio alongside) against the targets."""
    lines = [
        "| Target | FS / baseline (best) | (median) | Needed | Verdict |",
        "|---|---:|---:|---:|---|",
    ]
    all_pass = True
    for t in TARGETS:
        fs, base = results.get(t.fs), results.get(t.baseline)
        if fs is None or base is None or not base.best or not base.median:
            lines.append(f"| {t.label} | n/a | n/a | >= {t.minimum:g}x | not measured |")
            continue
        best, median = fs.best / base.best, fs.median / base.median
        ok = best >= t.minimum
        all_pass &= ok
        lines.append(
            f"| {t.label} | {best:.2f}x | {median:.2f}x | >= {t.minimum:g}x | "
            f"{'PASS' if ok else 'MISS'} |"
        )
    return lines, all_pass


def _run(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def commit(root: Path) -> str:
    """Short HEAD, plus whether the tree has uncommitted changes (read-only git calls)."""
    head = _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]) or "unknown"
    status = _run(["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain"])
    return f"{head} (dirty tree)" if status else f"{head} (clean tree)"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):  # not Linux: the model stays unknown
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    return {
        "CPU": cpu,
        "Cores": str(os.cpu_count()),
        "RAM": f"{psutil.virtual_memory().total / (1 << 30):.1f} GiB",
        "Kernel": platform.release(),
        "Python": platform.python_version(),
    }


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def write_section(doc: Path, name: str, body: str) -> None:
    """Replace (or add) the ``bench:NAME`` section of *doc*, keeping everything else."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else DOC_INTRO
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(text)
    tmp.replace(doc)
