"""A download's lease outlives its session until the transport has sent every byte written
from the arena: a client that ends a download early, or answers before reading, must never
receive bytes of whatever reuses the extent."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from common.messages import FileEntry
from fsserver.downloads import DRAIN_POLL, DownloadHandlers, DownloadStream
from fsserver.store import Opened
from tests.serverproc import eventually


class Host(DownloadHandlers):
    """The parts of ClientConnection the download handlers use, with a transport whose
    buffer the test empties by hand."""

    def __init__(self) -> None:
        self.released: list[int] = []
        self.ctx = SimpleNamespace(rpc=SimpleNamespace(call=self.rpc_call))
        self.closing = False
        self.downloads: dict[int, DownloadStream] = {}
        self.draining: list[DownloadStream] = []
        self.written = 0
        self.buffered = 0

    def rpc_call(self, op: str, lease: int) -> None:
        assert op == "release"
        self.released.append(lease)

    def sent(self) -> int:
        return self.written - self.buffered


def stream(host: Host, lease: int, last_byte: int) -> DownloadStream:
    entry = FileEntry(10, 1, 0, 0o644, bytes(16), "f")
    s = DownloadStream(host, lease, Opened(entry, 0, lease))
    s.last_byte = last_byte
    return s


def test_lease_waits_for_the_transport_to_send_the_views():
    async def main():
        host = Host()
        host.written, host.buffered = 1000, 600  # 400 bytes on the wire so far
        sent_already, still_queued = stream(host, 1, 300), stream(host, 2, 900)
        host.end_download(sent_already)
        host.end_download(still_queued)
        assert host.released == [1]
        await asyncio.sleep(DRAIN_POLL * 3)  # polls run; nothing has drained yet
        assert host.released == [1]
        host.buffered = 50  # the client reads
        await eventually(lambda: host.released == [1, 2], 2, "the second lease to go")
        assert host.released == [1, 2]
        assert host.draining == []

    asyncio.run(main())


def test_connection_loss_releases_every_lease():
    host = Host()
    host.written, host.buffered = 1000, 1000
    active, ending = stream(host, 7, 500), stream(host, 8, 900)
    host.downloads[7] = active
    host.draining.append(ending)
    host.closing = True
    host.release_all_downloads()
    assert sorted(host.released) == [7, 8]
