"""``python -m bench``: FS against raw TCP and rsync on loopback; see ``bench/__init__.py``.

Seven suites, all by default: ``--suite core`` (transfers through ``fsclient.Client``,
``bench.run``), ``--suite sync`` (whole ``fsclient sync`` commands and live clients,
``bench.syncrun``), ``--suite durable`` (what ``--data-dir`` costs, ``bench.durabench``),
``--suite latency`` (fan-out to 200 subscribers and CLI start-up, ``bench.latency``),
``--suite memory`` (the server's RAM per file, ``bench.membench``) and ``--suite link`` (FS
and rsync over a shaped 100 Mbit/s and 1 Gbit/s link between network namespaces, root only,
``bench.linkbench``) and ``--suite http`` (FS's HTTP API against nginx, both driven by curl,
the FS protocol alongside, ``bench.httpbench`` and ``bench.httpreport``).
Each writes its own section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bench import rsyncbench
from bench.httpbench import Unavailable
from bench.procs import ROOT
from bench.ramdir import NoRoom
from bench.report import (
    TARGETS,
    commit,
    machine,
    now,
    ratio_table,
    results_table,
    write_section,
)
from bench.run import MiB, Outcome, Settings, run_suite, say
from bench.shapedlink import LinkError

DOC = ROOT / "docs" / "PERFORMANCE.md"
SECTION = "core"
SUITES = ("core", "sync", "durable", "latency", "memory", "link", "http", "all")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.profiling import KINDS

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--suite", choices=SUITES, default="all",
                   help="which suite to run (default all: core, sync, durable, "
                   "latency, memory, link, http)")  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help="small sizes, 1 round, no doc update (smoke test)"
    )
    p.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    p.add_argument(
        "--repeats",
        type=int,
        help="timed rounds (default 7 core / 5 sync, http / 3 link, or 1 with --quick)",
    )
    p.add_argument("--big-mib", type=int, help="big file size in MiB (default 256, quick 32; "
                   "http 512; link: the log file, random bytes a quarter of it)")  # fmt: skip
    p.add_argument(
        "--small-count",
        type=int,
        help="small files (default 2000, quick 200; http 10000, quick 1000)",
    )
    p.add_argument("--doc", type=Path, default=DOC, help="document to update")
    p.add_argument(
        "--profile",
        choices=sorted(KINDS),
        help="profile one FS transfer in the client (cProfile) instead of benchmarking (core)",
    )
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.quick:
        s.big_size, s.small_count, s.repeats, s.warmup = 32 * MiB, 200, 1, False
    if args.repeats:
        s.repeats = max(1, args.repeats)
    if args.big_mib:
        s.big_size = args.big_mib * MiB
    if args.small_count:
        s.small_count = args.small_count
    return s


def document(s: Settings, outcome: Outcome, tables: list[str], quick: bool) -> str:
    info = machine()
    info["rsync"] = rsyncbench.version()
    size = f"{s.big_size // MiB} MiB"
    lines = [
        "## Core transfer benchmark",
        "",
        f"Run {now()} on commit {commit(ROOT)}"
        + (" — **quick smoke run, not representative**." if quick else "."),
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "Method (`python -m bench`, all on 127.0.0.1, the same bytes for every contender):",
        "",
        f"- Data: one {size} file of random bytes, page-cached (written, then read once), and "
        f"{s.small_count} files of {s.small_size} random bytes each.",
        f"- FS: `fsserver {' '.join(s.server_args())}` as a subprocess; the client "
        "(`fsclient.Client`, uvloop) runs in the benchmark process and is connected before "
        "the clock starts: only `put()` / `get()` / `put_many()` is timed. "
        f"Big file with `max_packet=4096` and with the largest the handshake allows "
        f"({outcome.negotiated_packet} bytes). Every upload carries content new to the server "
        "(random 16-byte tag), and is checked against `ls` (size and digest) and "
        "`fs_store_dedup_saved_bytes == 0`, so deduplication never skips data. Downloads go "
        "to a file on disk whose digest is checked afterwards. Small files: one `put_many` "
        "(default window and packet size) on one connection.",
        "- Raw TCP: the same bytes from memory, uvloop sender with pause/resume flow control, "
        "to a uvloop `BufferedProtocol` receiver in another process that reads into a "
        "preallocated 1 MiB buffer and discards; timed from the first write until the "
        "receiver acknowledges the last byte.",
        "- rsync: a real `rsync --daemon` on a free loopback port; the whole "
        "`rsync -a FILE rsync://127.0.0.1:PORT/mod/`, `rsync -a rsync://.../mod/big.bin DIR/` "
        "and `rsync -a SMALL_DIR/ rsync://.../mod/dir/` commands are timed, into emptied "
        "destinations.",
        f"- {s.repeats} timed round(s)"
        + (" after an untimed warm-up round" if s.warmup else "")
        + "; the contenders take turns within a round, in an order rotated every round. "
        "Best and median per series; the ratios compare best rates (median ratio alongside).",
        "- Noise: a shared 2-vCPU VM whose balloon does free-page reporting (first touch of "
        "fresh memory is ~4x slower than of reused memory). Runs that write files (downloads, "
        "rsync) are bimodal, probably because of that (rsync: ~300 vs ~1,000 MB/s; its slow "
        "mode shows up only while the fsserver's 1 GiB arena exists). Read best and median "
        "together.",
        "- Profiling: `python -m bench --profile upload4k` (or `download4k`, `upload`, "
        "`download`, `small`) runs one FS transfer under cProfile in the client.",
        "",
        *tables,
    ]
    return "\n".join(lines)


def run_core(args: argparse.Namespace) -> None:
    s = settings_from(args)
    outcome = run_suite(s)
    results = results_table(outcome.results)
    ratios, all_pass = ratio_table(outcome.results)
    tables = [*results, "", *ratios]
    print("\n".join(tables))
    print(f"\nnegotiated packet size: {outcome.negotiated_packet} bytes; "
          f"{'all' if all_pass else 'not all'} {len(TARGETS)} targets met", flush=True)  # fmt: skip
    if not (args.no_write or args.quick):
        write_section(args.doc, SECTION, document(s, outcome, tables, args.quick))
        say(f"bench: wrote the '{SECTION}' section of {args.doc}")


def run_sync(args: argparse.Namespace) -> None:
    from bench import syncreport
    from bench.syncrun import SyncSettings, run_sync_suite

    s = SyncSettings.quick() if args.quick else SyncSettings()
    if args.repeats:
        s.rounds = max(1, args.repeats)
    outcome = run_sync_suite(s)
    verdicts = syncreport.target_table(s, outcome)
    tables = [*syncreport.results_table(s, outcome), "", *syncreport.cpu_table(outcome), "",
              *verdicts.lines]  # fmt: skip
    print("\n".join(tables))
    print(f"\nsync: {'all' if verdicts.all_pass else 'not all'} targets met", flush=True)
    if not (args.no_write or args.quick):
        section = syncreport.SECTION
        write_section(args.doc, section, syncreport.document(s, outcome, tables, args.quick))
        say(f"bench: wrote the '{section}' section of {args.doc}")


def finish(args: argparse.Namespace, name: str, tables: list[str], all_pass: bool,
           section: str, document: Callable[[list[str]], str]) -> None:  # fmt: skip
    """Print a suite's tables and verdict, and write its section unless told not to."""
    print("\n".join(tables))
    print(f"\n{name}: {'all' if all_pass else 'not all'} targets met", flush=True)
    if not (args.no_write or args.quick):
        write_section(args.doc, section, document(tables))
        say(f"bench: wrote the '{section}' section of {args.doc}")


def run_durable(args: argparse.Namespace) -> None:
    from bench import durabench as d

    s = d.DurableSettings.quick() if args.quick else d.DurableSettings()
    if args.repeats:
        s.rounds = max(1, args.repeats)
    tables, all_pass = d.report(s, d.run_durable_suite(s))
    finish(args, "durable", tables, all_pass, d.SECTION, lambda t: d.document(s, t, args.quick))


def run_latency(args: argparse.Namespace) -> None:
    from bench import latency as lat

    s = lat.LatencySettings.quick() if args.quick else lat.LatencySettings()
    if args.repeats:
        s.cli_runs = max(1, args.repeats)
    tables, all_pass = lat.report(s, lat.run_latency_suite(s))
    finish(args, "latency", tables, all_pass, lat.SECTION,
           lambda t: lat.document(s, t, args.quick))  # fmt: skip


def run_memory(args: argparse.Namespace) -> None:
    import contextlib

    from bench import clientmem as cm
    from bench import membench as mem

    s = mem.MemSettings.quick() if args.quick else mem.MemSettings()
    c = cm.ClientSettings.quick() if args.quick else cm.ClientSettings()
    tables, ok = mem.report(s, mem.run_memory_suite(s))
    with contextlib.ExitStack() as stack:
        client, client_ok = cm.report(c, cm.run_client_part(c, stack))
    tables += ["", f"The client, at {c.files:,} files ({cm.__name__}):", "", *client]
    finish(args, "memory", tables, ok and client_ok, mem.SECTION,
           lambda t: mem.document(s, t, args.quick, cm.method(c)))  # fmt: skip


def run_link(args: argparse.Namespace) -> None:
    from bench import linkbench as lb
    from bench import linkreport

    s = lb.LinkSettings.quick() if args.quick else lb.LinkSettings()
    if args.repeats:
        s.rounds = max(1, args.repeats)
    if args.big_mib:
        s.log_size, s.random_size = args.big_mib * MiB, max(1, args.big_mib // 4) * MiB
    outcome = lb.run_link_suite(s)
    tables = linkreport.tables(s, outcome)
    print("\n".join(tables), flush=True)
    if not (args.no_write or args.quick):
        section = linkreport.SECTION
        write_section(args.doc, section, linkreport.document(s, outcome, tables, args.quick))
        say(f"bench: wrote the '{section}' section of {args.doc}")


def run_http(args: argparse.Namespace) -> None:
    from bench import httpbench as hb
    from bench import httpreport

    s = hb.HttpSettings.quick() if args.quick else hb.HttpSettings()
    s.rounds = max(1, args.repeats or s.rounds)
    s.big = (args.big_mib or s.big // MiB) * MiB
    s.small_count = args.small_count or s.small_count
    out = hb.run_http_suite(s)
    tables, met = httpreport.report(s, out)
    finish(args, "http", tables, met, httpreport.SECTION,
           lambda t: httpreport.document(s, out, t, args.quick))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        from bench.profiling import profile

        profile(args.profile, settings_from(args))
        return 0
    try:
        if args.suite in ("core", "all"):
            run_core(args)
        if args.suite in ("sync", "all"):
            run_sync(args)
        if args.suite in ("durable", "all"):
            run_durable(args)
        if args.suite in ("latency", "all"):
            run_latency(args)
        if args.suite in ("memory", "all"):
            run_memory(args)
        if args.suite in ("link", "all"):
            run_link(args)
        if args.suite in ("http", "all"):
            run_http(args)
    except KeyboardInterrupt:
        say("bench: interrupted, everything stopped")
        return 130
    except (NoRoom, LinkError, Unavailable) as e:
        say(f"bench: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
