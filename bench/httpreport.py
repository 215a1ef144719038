"""The HTTP suite's tables and its section of docs/PERFORMANCE.md (``bench.httpbench`` runs
it): the runs, FS's HTTP API beside nginx and the FS protocol, and the download target."""

from __future__ import annotations

from bench.httpbench import WHO, HttpOutcome, HttpSettings, MiB, kinds
from bench.procs import ROOT
from bench.report import Series, commit, machine, now, results_table

SECTION = "http"
TARGET = 0.7
"""FS's HTTP download of the big file, at least this share of nginx's rate (best of rounds)."""


def _cell(series: Series, size: int) -> str:
    if not series.seconds:
        return "n/a"
    mb = f" ({series.best * size / 1e6:,.1f} MB/s)" if series.unit == "files/s" else ""
    return f"{series.best:,.0f}{mb}"


def report(s: HttpSettings, out: HttpOutcome) -> tuple[list[str], bool]:
    """The runs, the side-by-side table, the target, and whether it is met."""
    res = out.results
    lines = [*results_table({k: v for k, v in res.items() if v.seconds}), "",
             "| Transfer (best of the rounds) | FS HTTP API | nginx | FS HTTP / nginx "
             "(best; median) | FS protocol | Unit |", "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for key, what, unit, _ in kinds(s):
        fs, ng, proto = (res[f"{who}_{key}"] for who in WHO)
        ratio = (f"{fs.best / ng.best:.2f}x; {fs.median / ng.median:.2f}x"
                 if ng.best and fs.best else "n/a")  # fmt: skip
        cells = [_cell(x, s.small_size) for x in (fs, ng, proto)]
        lines.append(f"| {what} | {cells[0]} | {cells[1]} | {ratio} | {cells[2]} | {unit} |")
    fs, ng = res["fs_down"], res["nginx_down"]
    ratio = fs.best / ng.best if ng.best else 0.0
    met = ratio >= TARGET
    lines += ["", "| Target | Result (best) | Verdict |", "|---|---:|---|",
              f"| HTTP download ≥ {TARGET}x nginx (MB/s) | {ratio:.2f}x | "
              f"{'met' if met else 'missed'} |", ""]  # fmt: skip
    conns = "; ".join(f"{WHO[who]} {way}load {out.connections[f'{who}_small_{way}']:,}"
                      for who in ("fs", "nginx") for way in ("down", "up")
                      if f"{who}_small_{way}" in out.connections)  # fmt: skip
    lines.append(f"TCP connections curl opened for the {s.small_count:,} small files (one "
                 f"command each): {conns}.")  # fmt: skip
    if not out.dav:
        lines.append("nginx here has no WebDAV module: its uploads are left out.")
    return lines, met


def document(s: HttpSettings, out: HttpOutcome, tables: list[str], quick: bool) -> str:
    info = machine() | out.versions
    return "\n".join([
        "## HTTP API benchmark",
        "",
        f"Run {now()} on commit {commit(ROOT)}"
        + (" — **quick smoke run, not representative**." if quick else "."),
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "Method (`python -m bench --suite http`, see `bench/httpbench.py`), all on 127.0.0.1, "
        "the same bytes and the same curl commands for both servers:",
        "",
        f"- Data on tmpfs (`/dev/shm`): one {s.big // MiB} MiB file of random bytes and "
        f"{s.small_count:,} files of {s.small_size} random bytes. nginx (one worker, "
        "`sendfile`, `access_log off`) serves them from there and takes WebDAV `PUT`s into "
        f"it; FS (`fsserver {' '.join(s.server_args())}`) serves them from its arena, "
        "loaded once with `fsclient put` before the rounds.",
        "- Downloads: the whole `curl -s -o /dev/null -w ... URL` command is timed; the small "
        "files with one `curl -s -K LIST` (a `url`/`output = /dev/null` pair a file), which "
        "reuses its connection whenever the server keeps it open. `-w` reports each status, "
        "size and new connection, all checked.",
        "- Uploads: `curl -s -T FILE URL` and one `curl -s -K LIST` of "
        "`upload-file`/`url` pairs; to FS into a new empty server each round (folder `rN/`, "
        "then its listing is checked against every path, size and digest, and "
        "`fs_store_dedup_saved_bytes` must stay 0: the HTTP API receives every byte anyway, "
        "it hashes the body after receiving it), to nginx into a new folder, checked and "
        "removed. curl sends `Expect: 100-continue` with every PUT, as users' curl does; "
        "both servers answer it.",
        "- FS protocol alongside: `fsclient get big.bin DEST`, `fsclient get -r small DEST` "
        "(into tmpfs, digest-checked) and `fsclient put FILE rN/big.bin`, `fsclient put -r "
        "DIR rN/small/` into a new empty server (not the HTTP one: the protocol can send "
        "a file's digest first and skip content the store already has), whole commands of "
        "the installed client.",
        f"- {s.rounds} round(s); the contenders take turns within a round, in an order "
        "rotated every round. Best and median per series; the ratio compares best rates "
        "(median ratio alongside).",
        "",
        *tables,
    ])  # fmt: skip
