"""The rules of small-file batches (``SmallFileBatch`` / ``SmallFileBatchResponse``), which
``FSConnection`` applies to both directions like every other rule.

A batch is a request: one reply per batch, matched by request id (``RequestTable``). On top of
that, a batch is allowed only on a connection that negotiated packets of at least
``MIN_BATCH_MAX_PACKET`` bytes (so the reply to the largest batch fits in one packet); it holds
1 to ``MAX_BATCH_FILES`` files of at most ``MAX_BATCH_FILE_BYTES`` each (the codec checks
those two as it decodes); at most ``MAX_BATCHES_IN_FLIGHT`` are outstanding; and the reply
carries exactly one result per file.
"""

from __future__ import annotations

from common import messages as m
from common.errors import ErrorCode, LocalProtocolError
from common.limits import MAX_BATCH_PACKET, MAX_BATCHES_IN_FLIGHT, MIN_BATCH_MAX_PACKET


def batch_allowed(max_packet: int) -> bool:
    """Batches may be sent on a connection that negotiated packets of this size."""
    return max_packet >= MIN_BATCH_MAX_PACKET


def batch_packet_limit(max_packet: int) -> int:
    """The longest SmallFileBatch packet allowed on a connection with this packet size."""
    return min(max_packet, MAX_BATCH_PACKET)


class BatchTable:
    """Outstanding batches of one connection: request id -> number of files."""

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.pending)

    @property
    def full(self) -> bool:
        """As many batches are outstanding as may be: the next one must wait for a reply."""
        return len(self.pending) >= MAX_BATCHES_IN_FLIGHT

    def check(self, msg: m.SmallFileBatch, max_packet: int) -> None:
        """Raise unless *msg* may be sent now (call before the request is opened)."""
        if not batch_allowed(max_packet):
            raise LocalProtocolError(
                f"SmallFileBatch needs packets of at least {MIN_BATCH_MAX_PACKET} bytes "
                f"(this connection agreed on {max_packet})",
                ErrorCode.UNEXPECTED_PACKET,
            )
        if not msg.files:
            raise LocalProtocolError("SmallFileBatch without files")
        if self.full:
            raise LocalProtocolError(
                f"more than {MAX_BATCHES_IN_FLIGHT} batches in flight", ErrorCode.LIMIT_EXCEEDED
            )

    def open(self, msg: m.SmallFileBatch) -> None:
        self.pending[msg.request_id] = len(msg.files)

    def close(self, msg: m.SmallFileBatchResponse) -> None:
        """The reply must carry one result per file (the request table checked the id)."""
        expected = self.pending.get(msg.request_id)
        if expected is not None and expected != len(msg.results):
            raise LocalProtocolError(
                f"SmallFileBatchResponse {msg.request_id} has {len(msg.results)} results for "
                f"{expected} files",
                ErrorCode.UNEXPECTED_PACKET,
            )
        self.pending.pop(msg.request_id, None)
