"""``FolderWatcher``: watchdog's view of the folder, handed to the event loop as paths.

Events are only hints (inotify drops them when its queue overflows, and an editor's atomic
save arrives as a move onto the file): the engine re-reads each path it is told about, and a
periodic rescan catches what never arrived. Handlers run on watchdog's thread, so they only
pass relative paths to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from fsclient.sync.state import MARKER

Changed = Callable[[str, bool], None]


class _Handler(FileSystemEventHandler):
    def __init__(self, root: str, loop: asyncio.AbstractEventLoop, changed: Changed) -> None:
        self.root = root
        self.loop = loop
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type in ("modified", "closed"):
            return  # a file in it changed, which has an event of its own
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = os.fsdecode(raw)
            if not path or not path.startswith(self.root + os.sep):
                continue
            rel = path[len(self.root) + 1 :].replace(os.sep, "/")
            if rel == MARKER or rel.startswith(MARKER + "/"):
                continue
            self.loop.call_soon_threadsafe(self.changed, rel, event.is_directory)


class FolderWatcher:
    def __init__(self, folder: Path, loop: asyncio.AbstractEventLoop, changed: Changed) -> None:
        self.observer = Observer()
        self.observer.daemon = True
        self.observer.schedule(_Handler(str(folder), loop, changed), str(folder), recursive=True)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)
