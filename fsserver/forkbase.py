"""What the fork server imports before it forks any child (``children.CHILDREN``).

Children are forked from one process that has imported their code and then frozen it out of
the garbage collector: their modules, classes and codec tables are pages shared with it,
copied only where a child writes. Each spawned child had imported all of it again: ~20 MiB of
its own per worker or hasher, against ~6 MiB forked (a server's fixed memory went from ~92 to
~53 MiB with two workers and a hasher, about 40 bytes per file of a million-file store).
The fork server runs no code of ours but this; it ends when the supervisor does (the pipe it
watches closes), and its children then get SIGTERM (``setup_child``'s parent-death signal).
"""

from __future__ import annotations

import gc
import signal

import fsserver.durability
import fsserver.supervisor  # noqa: F401  (the workers' and hashers' code)
from fsserver.process import name_process, set_comm

name_process("fork server")
set_comm("fs-forkserver")  # (not "fsserver": that is the supervisor's, which pgrep finds)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the supervisor's to handle
gc.freeze()  # a child's collections never walk (and so never copy) what was imported here
