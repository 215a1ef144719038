"""``PayloadCoding``: what one connection agreed on about compression, and the rules of its
compressed sessions and batches. ``FSConnection`` owns one and calls it at the few points
where a compressed payload differs from a plain one; the coders are in
``common.compression``."""

from __future__ import annotations

from collections.abc import Callable

from common import compression
from common import messages as m
from common.compression import CodecStats, Deflater, Inflater
from common.errors import LocalProtocolError
from common.limits import HEADER_SIZE
from common.state import Session, Step

_ZSTD = m.PayloadFlags.ZSTD
_REQUEST_ID = 4
"""A batch packet's request id, before its ``files`` field."""


class PayloadCoding:
    """See the module docstring. ``level`` is what this side compresses with; ``batches``
    whether ``send`` tries to compress a SmallFileBatch (the sender's policy sets both)."""

    __slots__ = ("agreed", "batches", "level", "offered", "payload", "stats")

    def __init__(self) -> None:
        self.offered = False
        self.agreed = False
        self.level = compression.DEFAULT_LEVEL
        self.batches = False
        self.stats = CodecStats()
        self.payload = [0, 0]
        """File bytes received and sent in data packets and batches, counted before
        compression: next to the packets' own bytes, what compression saved."""

    def handshake(self, msg: m.VersionHandshake | m.VersionHandshakeResponse) -> None:
        """The client's offer, then the server's answer (which may only accept an offer)."""
        wants = bool(msg.flags & m.HandshakeFlags.ZSTD)
        if isinstance(msg, m.VersionHandshake):
            self.offered = wants
            return
        if wants and not self.offered:
            raise LocalProtocolError("the server agreed to zstd, which the client did not offer")
        self.agreed = wants

    def check_agreed(self) -> None:
        """A packet says ZSTD: only on a connection that agreed on it."""
        if not self.agreed:
            raise LocalProtocolError("a compressed payload on a connection without zstd")

    def flag_session(self, session: Session, step: Step, flags: int) -> None:
        """Apply the ``PayloadFlags`` of the packet that made *step* on *session* (the
        connection checked ``check_agreed`` already)."""
        if not flags & _ZSTD:
            return
        if step is Step.DOWNLOAD_REQUEST:
            session.zstd_asked = True
        elif step is Step.DOWNLOAD_OK and not session.zstd_asked:
            raise LocalProtocolError("a compressed download that was not asked for")
        else:
            session.zstd = True

    def inflate(self, session: Session, chunk: memoryview, deliver: Callable[[bytes], None]
                ) -> None:  # fmt: skip
        """Wire bytes of a compressed session: its original bytes go to *deliver*."""
        if session.coder is None:
            left = session.size - session.transferred

            def counted(data: bytes) -> None:
                session.transferred += len(data)
                self.payload[0] += len(data)
                deliver(data)

            session.coder = Inflater(left, counted, self.stats)
        session.coder.feed(chunk)

    def deflate(self, session: Session, data: bytes | memoryview) -> bytes:
        """Original bytes of a compressed session: what to send of them now (zstd keeps some
        back until it has a block, or until ``finish``)."""
        if session.coder is None:
            session.coder = Deflater(self.level, self.stats)
        self.payload[1] += len(data)
        return session.coder.compress(data)

    @staticmethod
    def finish(session: Session) -> bytes:
        """The end of a compressed session's stream (sent before its CheckHash)."""
        coder, session.coder = session.coder, None
        return coder.finish() if isinstance(coder, Deflater) else b""

    def inflate_batch(self, msg: m.SmallFileBatchZstd, limit: int) -> memoryview:
        """The SmallFileBatch body *msg* stands for: at most *limit* bytes as a packet."""
        if not self.agreed:
            raise LocalProtocolError("a compressed batch on a connection without zstd")
        if msg.size + HEADER_SIZE + _REQUEST_ID > limit:
            raise LocalProtocolError(f"a compressed batch of {msg.size} bytes exceeds {limit}")
        files = compression.inflate_whole(msg.frame, msg.size, self.stats)
        return memoryview(msg.request_id.to_bytes(_REQUEST_ID, "big") + files)

    def deflate_batch(self, packet: bytes) -> m.SmallFileBatchZstd | None:
        """*packet* (an encoded SmallFileBatch) compressed, if that pays."""
        start = HEADER_SIZE + _REQUEST_ID
        files = memoryview(packet)[start:]
        frame = compression.deflate_whole(files, self.level, self.stats)
        if len(frame) > len(files) * compression.WORTH:
            return None
        request_id = int.from_bytes(packet[HEADER_SIZE:start], "big")
        return m.SmallFileBatchZstd(request_id, len(files), frame)
