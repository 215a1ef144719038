"""Tables and the ``bench:link`` section of docs/PERFORMANCE.md for the link suite."""

from __future__ import annotations

import statistics

from bench import rsyncbench
from bench.linkbench import CONTENDERS, LABELS, LinkOutcome, LinkSettings, Run
from bench.procs import ROOT
from bench.ramdir import PREFIX, SHM_ROOT
from bench.report import commit, machine, now
from bench.shapedlink import BURST_MIN, BURST_TIME, LATENCY_MS

SECTION = "link"
MB = 1_000_000


def _mbit(rate: int) -> str:
    return f"{rate / 1e9:g} Gbit/s" if rate >= 1e9 else f"{rate / 1e6:g} Mbit/s"


def tables(s: LinkSettings, o: LinkOutcome) -> list[str]:
    lines: list[str] = []
    for rate in s.rates:
        up, down = o.probes.get(rate, (0.0, 0.0))
        lines += [
            f"### {_mbit(rate)}",
            "",
            f"TCP goodput probe before the runs: {up / 1e6:.1f} Mbit/s client -> server, "
            f"{down / 1e6:.1f} Mbit/s server -> client.",
            "",
            "| Data | Contender | Best (s) | Median (s) | Rate (best) | Wire up (MB) | "
            "Wire down (MB) | Data / wire up | Runs (s) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for data in o.datasets:
            for contender in CONTENDERS:
                runs = o.runs.get((rate, data.name, contender))
                if not runs:
                    continue
                best = min(runs, key=lambda r: r.seconds)
                median = statistics.median(r.seconds for r in runs)
                rate_text = _rate(data.size, data.files, data.is_tree, best)
                times = ", ".join(f"{r.seconds:.2f}" for r in runs)
                lines.append(
                    f"| {data.label} | {LABELS[contender]} | {best.seconds:.2f} | {median:.2f} | "
                    f"{rate_text} | {best.tx / MB:.1f} | {best.rx / MB:.1f} | "
                    f"{data.size / best.tx:.2f}x | {times} |"
                )
        lines.append("")
    return lines


def _rate(size: int, files: int, tree: bool, run: Run) -> str:
    mbs = f"{size / MB / run.seconds:,.1f} MB/s"
    return f"{files / run.seconds:,.0f} files/s ({mbs})" if tree else mbs


def document(s: LinkSettings, o: LinkOutcome, body: list[str], quick: bool) -> str:
    info = machine()
    info["rsync"] = rsyncbench.version()
    info["fsclient knows --compress"] = (
        "yes" if o.client_compresses else "no: FS_COMPRESS is ignored, both FS rows are plain"
    )
    links = "; ".join(o.link_text.values())
    lines = [
        "## Shaped-link benchmark",
        "",
        f"Run {now()} on commit {commit(ROOT)}"
        + (" — **quick smoke run, not representative**." if quick else "."),
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "Method (`python -m bench --suite link`, `bench/linkbench.py`, `bench/shapedlink.py`):",
        "",
        "- The link: two network namespaces (server side, client side) joined by a veth "
        f"pair, each end under `tc ... tbf` ({links}). tbf's burst is "
        f"max(rate x {BURST_TIME * 1000:g} ms, {BURST_MIN // 1024} KiB) and its queue "
        f"{LATENCY_MS:g} ms; it counts whole Ethernet frames, so one TCP stream's goodput is "
        "at most 1448/1514 = 95.6% of the rate (the probe line under each heading: a Python "
        "TCP sender and receiver across the link, goodput after the first 0.3 s).",
        "- Servers listen inside the server namespace: a new, empty `fsserver "
        f"{' '.join(s.server_args())} --insecure-no-auth --metrics-host 127.0.0.1` on its veth "
        "address for every FS run, and one `rsync --daemon` (module `mod`, as in the core "
        "suite) per link rate, its module emptied right before every rsync run. The clients "
        "are whole installed commands run inside the client namespace (`ip netns exec`), "
        "timed from start to exit: `.venv/bin/fsclient put FILE NAME` for a single file and "
        "`fsclient sync COPY --once` for the tree (a fresh copy each run), with "
        "`FS_COMPRESS=off` and `FS_COMPRESS=auto` in the environment; `rsync -a` and "
        "`rsync -az` (`--compress-choice=zstd` for the single files; for the tree `-az` "
        "alone, which rsync >= 3.2 also settles on zstd when both ends have it).",
        f"- Data, on tmpfs (`{SHM_ROOT}/{PREFIX}*`, removed at the end): a log-like text "
        f"file of {s.log_size // 2**20} MiB (`bench/linkdata.py`: timestamps, levels, "
        "services, request ids, varying messages; zstd -3 makes about 7x of it); every `.py` "
        "file of the running Python's standard library, folders kept (no site-packages); "
        f"{s.random_size // 2**20} MiB of `os.urandom`. Every run is checked outside the "
        "clock: each file's size and XXH3-128 at the destination (`fsclient ls --json`, or "
        "the rsync module), and `fsclient sync`'s tally line.",
        "- Wire bytes: the client veth's tx / rx byte counters (`ip -s link`) before and "
        "after each run: every frame of the transfer, headers included, for FS and rsync "
        "alike (the handshake, listing and acknowledgements too). `Data / wire up` is the "
        "data's size over the bytes sent.",
        f"- {s.rounds} round(s); within a round the four contenders take turns per data set "
        "in an order rotated every round. Best (shortest) run, its wire bytes, and the median "
        "time alongside. MB = 10^6 bytes.",
        "",
        *body,
    ]
    return "\n".join(lines)
