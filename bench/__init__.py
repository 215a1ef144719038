"""FS benchmark harness: ``python -m bench`` (``make bench``).

Seven suites, all run by default (see ``bench.__main__``); each prints its results and the
targets, and rewrites its own section of ``docs/PERFORMANCE.md``.

- core: on loopback, on the same bytes, FS (a real ``fsserver`` subprocess and
  ``fsclient.Client``) against two baselines: raw TCP with uvloop (``bench.rawtcp``) and a real
  ``rsync --daemon`` (``bench.rsyncbench``).
- sync: whole ``fsclient sync`` commands against whole ``rsync -a`` commands (initial sync of
  10,000 small files, no-change re-run), save-to-complete latency between two live clients, and
  the memory and idle CPU of a live client watching 100,000 files. Its trees and the rsync
  destination live on tmpfs (``/dev/shm``, as FS's store does), and each round has a new server.
- latency (``--suite latency``): fan-out (200 subscribed connections fetch each new 4 KiB file;
  writer's hash OK to the last holder, p99) and CLI start-up (whole ``fsclient --help`` and
  ``fsclient ls`` of an empty share, best of 15).
- link (``--suite link``, root only): FS (``FS_COMPRESS`` off and auto) against ``rsync -a``
  and ``rsync -az`` over a link shaped to 100 Mbit/s and 1 Gbit/s between two network
  namespaces (``bench.shapedlink``): a 256 MiB log, the stdlib's source tree, random bytes.
- http (``--suite http``): FS's HTTP API against nginx 1.22, both driven by the same ``curl``
  commands: a 512 MiB file and 10,000 x 4 KiB files down and up, ``fsclient`` alongside.

    python -m bench                      # both suites, full runs
    python -m bench --suite core         # core only (256 MiB, 2000 small files, 7 rounds)
    python -m bench --suite sync         # sync only (5 rounds, ~2-3 minutes)
    python -m bench --suite latency      # fan-out and CLI start-up (~1 minute)
    python -m bench --suite link         # shaped links, compression (~7 minutes)
    python -m bench --suite http         # HTTP API vs nginx, curl (~4 min, estimated)
    python -m bench --quick              # smoke test: small sizes, 1 round, no doc update
    python -m bench --no-write           # full run, leave the document alone
    python -m bench --profile upload4k   # cProfile one 4096-byte-packet upload in the client

Modules: ``run`` (the core rounds), ``fsbench``, ``rawtcp``, ``rsyncbench`` (the contenders),
``data`` (the workload), ``procs`` (child processes), ``report`` (tables and the document),
``profiling``; ``syncrun`` (the sync suite), ``syncbench`` (its measurements), ``synctree``
(its folders), ``ramdir`` (their place on tmpfs), ``syncreport`` (its tables and section);
``latency`` (the latency suite), ``fanout`` (its subscribers), ``startup`` (CLI timings);
``linkbench`` (the link suite), ``shapedlink`` (its namespaces), ``linkdata``, ``linkreport``;
``httpbench`` (the http suite, its nginx), ``httpreport``.
"""
