"""What the fork server imports before it forks any child (``children.CHILDREN``).

Children are forked from one process that has imported their code and then frozen it out of
the garbage collector: their modules, classes and codec tables are pages shared with it,
copied only where a child writes. Each spawned child had imported all of it again: ~20 MiB of
its own per worker or hasher, against ~6 MiB forked (a server's fixed memory went from ~92 to
~51 MiB with two workers and a hasher, about 40 bytes per file of a million-file store).

The fork server runs no code of ours but this. It ignores SIGINT and SIGTERM (a terminal's
Ctrl-C, or systemd's stop of the whole group, is the supervisor's to handle: were the fork
server gone, every child would look dead to the supervisor, whose watch of a child is the
fork server's word), and it is killed when the supervisor dies (its parent-death signal),
which sends its children SIGTERM (theirs, ``process.setup_child``). Its children undo both.
"""

from __future__ import annotations

import gc
import os
import signal

from fsserver.process import SUPERVISOR_PID, die_with_parent, name_process, set_comm

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
die_with_parent(signal.SIGKILL, os.environ.get(SUPERVISOR_PID))  # (before the long imports)
name_process("fork server")
set_comm("fs-forkserver")  # (not "fsserver": that is the supervisor's, which pgrep finds)

import fsserver.durability  # noqa: E402
import fsserver.store.persister  # noqa: E402
import fsserver.supervisor  # noqa: E402, F401  (the workers' and hashers' code)

gc.freeze()  # a child's collections never walk (and so never copy) what was imported here
