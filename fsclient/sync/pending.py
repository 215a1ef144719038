"""What the sync engine still has to do: ``ServerNews`` (server changes not yet applied to the
folder, and the sync position they allow) and ``SettleQueue`` (paths waiting to be settled).

The rule that keeps a folder from missing a change for good: the saved position (``last_seq``)
only moves past a version once that version has really been applied. A change that did not
apply (a cut connection, a file edited meanwhile, a full disk) stays news; its path is decided
again from a fresh look, and a restart reads it again from the server's backlog.
"""

from __future__ import annotations

import asyncio
import heapq

from fsclient.sync.plan import RemoteState


class ServerNews:
    """The latest unapplied server change per path, and the oldest unapplied version of each
    (a later change of a path stands for the earlier ones, but only once it is applied)."""

    def __init__(self, seen: int = 0) -> None:
        self.latest: dict[str, RemoteState] = {}
        self.oldest: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        """(oldest version, path); entries whose path has moved on are dropped lazily."""
        self.seen = seen
        """The highest version known to be accounted for once nothing is pending."""

    def __len__(self) -> int:
        return len(self.latest)

    def add(self, path: str, state: RemoteState) -> None:
        self.seen = max(self.seen, state.version)
        self.latest[path] = state
        if path not in self.oldest:
            self.oldest[path] = state.version
            heapq.heappush(self._heap, (state.version, path))
            if len(self._heap) > 2 * len(self.oldest) + 64:  # stale entries behind a stuck one
                self._heap = [(v, p) for p, v in self.oldest.items()]
                heapq.heapify(self._heap)

    def get(self, path: str) -> RemoteState | None:
        return self.latest.get(path)

    def mark_applied(self, path: str, state: RemoteState) -> bool:
        """*state* was applied to *path*; True if that settles the path (no newer news came)."""
        if self.latest.get(path) is not state:
            return path not in self.latest
        del self.latest[path]
        del self.oldest[path]
        return True

    def position(self) -> int:
        """The highest version below which every change is applied."""
        heap = self._heap
        while heap and self.oldest.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] - 1 if heap else self.seen

    def clear(self) -> None:
        self.latest.clear()
        self.oldest.clear()
        self._heap.clear()


class SettleQueue:
    """Paths to settle, each by one settler at a time: a path put while it is being settled
    is taken again once that ends (news may have come in between)."""

    def __init__(self) -> None:
        self.waiting: dict[str, None] = {}
        """An ordered set: first put, first settled."""
        self.busy: set[str] = set()
        self.again: set[str] = set()
        self._changed = asyncio.Event()

    def put(self, path: str) -> None:
        if path in self.busy:
            self.again.add(path)
        else:
            self.waiting[path] = None
            self._changed.set()

    async def take(self) -> str:
        while not self.waiting:
            self._changed.clear()
            await self._changed.wait()
        path = next(iter(self.waiting))
        del self.waiting[path]
        self.busy.add(path)
        return path

    def done(self, path: str) -> None:
        self.busy.discard(path)
        if path in self.again:
            self.again.discard(path)
            self.waiting[path] = None
        self._changed.set()

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.busy

    async def drained(self) -> None:
        """Wait until nothing is waiting or being settled."""
        while not self.idle:
            self._changed.clear()
            await self._changed.wait()

    def clear(self) -> None:
        self.waiting.clear()
        self.again.clear()
