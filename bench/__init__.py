"""FS benchmark harness: ``python -m bench`` (``make bench``).

On loopback, on the same bytes, it measures FS (a real ``fsserver`` subprocess and
``fsclient.Client``) against two baselines: raw TCP with uvloop (``bench.rawtcp``) and a real
``rsync --daemon`` (``bench.rsyncbench``). It prints the results and the FS/baseline ratios
against the targets, and rewrites its section of ``docs/PERFORMANCE.md``.

    python -m bench                      # full run (256 MiB, 2000 small files, warm-up + 7 rounds)
    python -m bench --quick              # smoke test: small sizes, 1 round, no doc update
    python -m bench --no-write           # full run, leave the document alone
    python -m bench --profile upload4k   # cProfile one 4096-byte-packet upload in the client

Modules: ``run`` (the rounds), ``fsbench``, ``rawtcp``, ``rsyncbench`` (the contenders),
``data`` (the workload), ``procs`` (child processes), ``report`` (tables and the document),
``profiling``.
"""
