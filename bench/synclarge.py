"""The large-tree part of the sync suite (issue 13): a tree of 100,000 small files in 1,000
folders, synced whole by ``fsclient sync --once`` and by ``rsync -a``, then again with nothing
changed, then again after some of its files changed.

Each round gets a new tree of fresh random content and a new empty ``fsserver`` (as the small
rounds of ``bench.syncrun`` do); FS and rsync take turns going first. The changed files get new
random bytes of the same size and an mtime 100 s in the past, the same in the FS folder and in
rsync's source, so that both tools see them by size and mtime (rsync compares whole seconds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench import syncbench as sb
from bench.data import empty_dir
from bench.fsbench import BenchCheckFailed
from bench.procs import FsServer
from bench.synctree import copy_tree, make_tree, remove, tree_name

if TYPE_CHECKING:
    from bench.syncrun import Bench

SUB = "large"
"""The rsync module's folder for this part (the small rounds use ``sub``)."""


@dataclass
class LargeOutcome:
    fs_initial: list[float] = field(default_factory=list)
    rsync_initial: list[float] = field(default_factory=list)
    fs_nochange: list[float] = field(default_factory=list)
    rsync_nochange: list[float] = field(default_factory=list)
    fs_changed: list[float] = field(default_factory=list)
    rsync_changed: list[float] = field(default_factory=list)


def changed_names(files: int, folders: int, count: int) -> list[str]:
    """*count* files spread over the tree (every folder's share, evenly)."""
    step = max(1, files // count)
    return [tree_name(i, folders) for i in range(0, files, step)][:count]


def change_files(roots: list[Path], names: list[str], size: int) -> dict[str, bytes]:
    """Give each of *names* new random bytes (the same under every root) and an mtime 100 s
    back; the new content by name."""
    when = int(os.path.getmtime(roots[0] / names[0])) - 100
    contents = {}
    for name in names:
        data = os.urandom(size)
        contents[name] = data
        for root in roots:
            (root / name).write_bytes(data)
            os.utime(root / name, (when, when))
    return contents


def check_changed(dest: Path, contents: dict[str, bytes]) -> None:
    wrong = [name for name, data in contents.items() if (dest / name).read_bytes() != data]
    if wrong:
        raise BenchCheckFailed(f"rsync: {len(wrong)} changed files not updated (e.g. {wrong[0]})")


def large_round(bench: Bench, r: int) -> None:
    """One round: a fresh tree and a new empty server; initial, no-change, changed runs.
    Odd rounds rsync goes first, even rounds FS."""
    s = bench.s
    tree, fs_dir = bench.work / f"large-tree-{r}", bench.work / f"large-fs-{r}"
    digests = make_tree(tree, s.large_files, s.file_size, s.large_folders)
    copy_tree(tree, fs_dir)
    server = FsServer(s.server_args())
    turn = 1 if r % 2 else -1
    try:
        for step in [lambda: _rsync_pair(bench, tree),
                     lambda: _fs_pair(bench, server, fs_dir, digests)][::turn]:  # fmt: skip
            step()
        names = changed_names(s.large_files, s.large_folders, s.large_changed)
        contents = change_files([tree, fs_dir], names, s.file_size)
        for step in [lambda: _rsync_changed(bench, tree, contents),
                     lambda: _fs_changed(bench, server, fs_dir)][::turn]:  # fmt: skip
            step()
    finally:
        server.stop()
    remove(tree)
    remove(fs_dir)


def _rsync_pair(bench: Bench, tree: Path) -> None:
    """Initial (into an emptied destination, as ``Bench.rsync_pair`` does) and no-change."""
    out = bench.out.large
    dest, url = bench.module_root / SUB, f"{bench.daemon.url}/{SUB}"
    if not dest.exists():
        sb.rsync_once(tree, url)  # untimed: the first emptying frees a copy, as later ones do
    empty_dir(bench.module_root)
    for key, series in (("large_rsync_initial", out.rsync_initial),
                        ("large_rsync_nochange", out.rsync_nochange)):  # fmt: skip
        series.append(bench.with_cpu(key, lambda: sb.rsync_once(tree, url), None))
        sb.check_rsync(dest, bench.s.large_files)


def _rsync_changed(bench: Bench, tree: Path, contents: dict[str, bytes]) -> None:
    url = f"{bench.daemon.url}/{SUB}"
    seconds = bench.with_cpu("large_rsync_changed", lambda: sb.rsync_once(tree, url), None)
    bench.out.large.rsync_changed.append(seconds)
    check_changed(bench.module_root / SUB, contents)


def _fs_pair(bench: Bench, server: FsServer, fs_dir: Path, digests: dict[str, bytes]) -> None:
    s, out = bench.s, bench.out.large
    addr = server.address
    seconds, tally = bench.with_cpu("large_fs_initial", lambda: _once(server, fs_dir), server)
    out.fs_initial.append(seconds)
    sb.check_tally(tally, s.large_files, "large tree, initial sync")
    sb.check_share(addr, "default", digests, s.file_size)
    if saved := server.metric("fs_store_dedup_saved_bytes"):
        raise BenchCheckFailed(f"the server deduplicated {saved:.0f} bytes: data skipped")
    seconds, tally = bench.with_cpu("large_fs_nochange", lambda: _once(server, fs_dir), server)
    out.fs_nochange.append(seconds)
    sb.check_tally(tally, 0, "large tree, no-change re-run")


def _fs_changed(bench: Bench, server: FsServer, fs_dir: Path) -> None:
    seconds, tally = bench.with_cpu("large_fs_changed", lambda: _once(server, fs_dir), server)
    bench.out.large.fs_changed.append(seconds)
    sb.check_tally(tally, bench.s.large_changed, "large tree, changed re-run")


def _once(server: FsServer, fs_dir: Path) -> tuple[float, sb.Tally | None]:
    return sb.fs_once(fs_dir, server.address, "default")
