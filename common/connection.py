"""``FSConnection``: one end of an FS connection as a sans-IO state machine.

Bytes in (``receive``) become events; messages out (``send``) become bytes. Both directions run
through the same checks: packet size, handshake first, which role may send which packet, and the
per-file session table of ``common.state``. Nothing but ``RemoteProtocolError`` escapes
``receive``, and after one the connection stays in the ERROR phase.

Payloads are the hot path. A caller may attach a *sink* to a file id; payload bytes for that file
are then copied straight into it instead of surfacing as ``DataChunk`` events, and while a large
payload is in flight ``direct_target()`` hands out the sink's memory so the caller can read from
the socket directly into it (zero-copy).

A compressed payload (agreed in the handshake, flagged per session; ``common.payloadcoding``)
takes the general path instead: its wire bytes are decompressed here, counted as the original
bytes they become, and those reach the sink or the events like any other payload.
"""

from __future__ import annotations

import struct
from enum import Enum, auto

from common import messages as m
from common.batches import BatchTable, batch_packet_limit
from common.codec import DATA_HEADER, HEADER, decode_body, encode, packet_type_of
from common.compression import wire_limit
from common.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from common.limits import (
    ABSOLUTE_MAX_PACKET,
    DATA_HEADER_SIZE,
    DEFAULT_MAX_PACKET,
    HEADER_SIZE,
    MAX_CLIENT_CONTROL_PACKET,
    MAX_IN_FLIGHT,
    MIN_MAX_PACKET,
    NO_FILE,
    SERVER_MAX_PACKET,
)
from common.messages import PacketType as T
from common.payloadcoding import PayloadCoding
from common.rules import CLIENT_SENDS, RESPONSE_OF, RESPONSES, SERVER_SENDS, session_step
from common.sinks import DataChunk, Event, PayloadSink, ViewSink
from common.state import RequestTable, Role, Session, SessionTable, Step

__all__ = ["ConnPhase", "DataChunk", "Event", "FSConnection", "PayloadSink", "ViewSink"]

_U32 = struct.Struct(">I")
_TYPES = 256
_FLAGGED = frozenset({Step.INIT, Step.DOWNLOAD_REQUEST, Step.DOWNLOAD_OK})
"""Session steps whose packet carries ``PayloadFlags`` that change the session."""


def _data_bytes(counts: list[int]) -> int:
    return counts[T.FILE_SYNC_DATA] + counts[T.SMALL_FILE_BATCH] + counts[T.SMALL_FILE_BATCH_ZSTD]


_WITH_FLAGS = (m.FileSyncInit, m.DownloadRequest, m.DownloadVersionRequest, m.DownloadResponse)
"""Packets with ``PayloadFlags`` (a refusal's too must not say ZSTD unless it was agreed)."""


class ConnPhase(Enum):
    HANDSHAKE = auto()
    AWAIT_HANDSHAKE_RESPONSE = auto()
    HANDSHAKE_RECEIVED = auto()
    READY = auto()
    CLOSED = auto()
    ERROR = auto()


class FSConnection:
    """Protocol state of one connection end. See the module docstring."""

    def __init__(
        self,
        role: Role,
        *,
        max_packet_limit: int = SERVER_MAX_PACKET,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if not MIN_MAX_PACKET <= max_packet_limit <= ABSOLUTE_MAX_PACKET:
            raise ValueError(f"max packet must be {MIN_MAX_PACKET}..{ABSOLUTE_MAX_PACKET}")
        self.role = role
        self.peer = Role.SERVER if role is Role.CLIENT else Role.CLIENT
        self.phase = ConnPhase.HANDSHAKE
        self._set_max_packet(DEFAULT_MAX_PACKET)
        self.max_packet_limit = max_packet_limit
        self._proposed = max_packet_limit
        self.sessions = SessionTable(max_in_flight)
        self.requests = RequestTable(max_in_flight)
        self.batches = BatchTable()
        self.subscribed = False
        self._sends = CLIENT_SENDS if role is Role.CLIENT else SERVER_SENDS
        self._peer_sends = SERVER_SENDS if role is Role.CLIENT else CLIENT_SENDS
        self._sinks: dict[int, PayloadSink] = {}
        self._payload_left = 0
        self._payload_file = 0
        self._payload_sink: PayloadSink | None = None
        self._evented: set[int] = set()
        self._zstd_session: Session | None = None
        """The session of the payload arriving, if it is compressed."""
        self._events: list[Event] = []
        self.coding = PayloadCoding()
        # plain counters, indexed by packet type: metrics read them now and then
        self.rx_packets, self.rx_bytes = [0] * _TYPES, [0] * _TYPES
        self.tx_packets, self.tx_bytes = [0] * _TYPES, [0] * _TYPES
        # File ids whose session this side ended with an Error: the peer may still have
        # packets for them on the wire. Cleared when the peer opens the id again.
        self._ended: dict[int, None] = {}
        self._skip_payload = False
        self._pending = bytearray()
        self.max_control_packet = (
            MAX_CLIENT_CONTROL_PACKET if role is Role.SERVER else ABSOLUTE_MAX_PACKET
        )

    # -- sinks -----------------------------------------------------------------------------

    def attach_sink(self, file_id: int, sink: PayloadSink) -> None:
        self._sinks[file_id] = sink

    def detach_sink(self, file_id: int) -> None:
        self._sinks.pop(file_id, None)
        if self._payload_file == file_id:
            self._payload_sink = None

    def direct_target(self) -> memoryview | None:
        """Memory for the rest of the current payload, if it goes to a sink; else None."""
        if not self._payload_left or self._payload_sink is None:
            return None
        target = self._payload_sink.target()
        return target[: self._payload_left] if len(target) > self._payload_left else target

    def direct_received(self, nbytes: int) -> None:
        """*nbytes* were read straight into ``direct_target()``."""
        assert self._payload_sink is not None and nbytes <= self._payload_left
        self._payload_sink.advance(nbytes)
        self._payload_left -= nbytes

    # -- inbound -------------------------------------------------------------------------------

    def receive(self, buf: memoryview) -> tuple[list[Event], int]:
        """Parse whole packets from *buf*; return the events and how many bytes were used.

        Unused bytes (an incomplete packet) must be passed again, with more, next time. Handle
        the events (DataChunk views point into *buf*) before the next call: a file's payload
        reaches its sink and its DataChunk events in stream order only if they are consumed
        in order.
        """
        if self.phase is ConnPhase.ERROR:
            raise RemoteProtocolError("connection already failed")
        events: list[Event] = []
        try:
            used = self._parse(buf, events)
        except LocalProtocolError as exc:
            self.phase = ConnPhase.ERROR
            raise RemoteProtocolError(exc.message, exc.code) from None
        except RemoteProtocolError:
            self.phase = ConnPhase.ERROR
            raise
        return events, used

    def feed(self, data: bytes) -> list[Event]:
        """Convenience for tests and simple tools: buffer *data* and return whole events.

        DataChunk payloads are copied to ``bytes`` so they outlive the call.
        """
        self._pending += data
        events, used = self.receive(memoryview(self._pending))
        events = [
            DataChunk(e.file_id, bytes(e.data)) if isinstance(e, DataChunk) else e for e in events
        ]
        del self._pending[:used]
        return events

    def _parse(self, buf: memoryview, events: list[Event]) -> int:
        pos, end = 0, len(buf)
        self._evented.clear()
        while pos < end:
            if self._payload_left:
                pos = self._take_payload(buf, pos, end, events)
                continue
            if end - pos < HEADER_SIZE:
                break
            length, ptype = HEADER.unpack_from(buf, pos)
            if length > self.max_packet:
                raise LocalProtocolError(
                    f"packet of {length} bytes exceeds the maximum of {self.max_packet}",
                    ErrorCode.PACKET_TOO_LARGE,
                )
            if ptype == T.FILE_SYNC_DATA:
                if length < DATA_HEADER_SIZE:
                    raise LocalProtocolError(f"FileSyncData length {length} is below 9")
                if end - pos < DATA_HEADER_SIZE:
                    break
                self._start_payload(length, _U32.unpack_from(buf, pos + HEADER_SIZE)[0])
                self.rx_packets[T.FILE_SYNC_DATA] += 1
                self.rx_bytes[T.FILE_SYNC_DATA] += length
                pos += DATA_HEADER_SIZE
                if self._payload_sink is not None:
                    pos = self._fill_run(buf, pos, end)
                continue
            if length < HEADER_SIZE:
                raise LocalProtocolError(f"packet length {length} is shorter than its header")
            if ptype == T.SMALL_FILE_BATCH or ptype == T.SMALL_FILE_BATCH_ZSTD:
                if length > self._batch_limit:
                    raise LocalProtocolError(
                        f"SmallFileBatch of {length} bytes exceeds {self._batch_limit}",
                        ErrorCode.PACKET_TOO_LARGE,
                    )
            elif length > self.max_control_packet:
                raise LocalProtocolError(
                    f"{length}-byte packet of type {ptype} exceeds {self.max_control_packet}",
                    ErrorCode.PACKET_TOO_LARGE,
                )
            if end - pos < length:
                break
            msg = decode_body(ptype, buf[pos + HEADER_SIZE : pos + length])
            pos += length
            self.rx_packets[ptype] += 1
            self.rx_bytes[ptype] += length
            if ptype == T.SMALL_FILE_BATCH_ZSTD:
                self._require_ready(T.SMALL_FILE_BATCH_ZSTD, self.peer)
                self.coding.payload[0] += msg.size + 4  # (as sent: the request id, the files)
                msg = self._inflated_batch(msg)
            elif ptype == T.SMALL_FILE_BATCH:
                self.coding.payload[0] += length - HEADER_SIZE
            if self._apply(msg, self.peer):
                events.append(msg)
        return pos

    def _start_payload(self, length: int, file_id: int) -> None:
        self._require_ready(T.FILE_SYNC_DATA, self.peer)
        nbytes = length - DATA_HEADER_SIZE
        self._payload_left = nbytes
        self._payload_file = file_id
        self._skip_payload = self._stale(file_id)
        self._zstd_session = None
        if self._skip_payload:  # sent before the peer saw our Error: drop it
            self._payload_sink = None
            return
        session = self.sessions.open_for_data(file_id, self.peer)
        if session.zstd:
            self.sessions.count_wire(session, file_id, nbytes, wire_limit(session.size))
            self._zstd_session = session
            self._payload_sink = None
            return
        self.sessions.add_data(session, file_id, nbytes)
        self.coding.payload[0] += nbytes
        # Bytes of this file already handed out as DataChunk events in this call must not be
        # overtaken by later bytes copied straight into a sink: keep to events until next call.
        sink = self._sinks.get(file_id)
        self._payload_sink = None if file_id in self._evented else sink

    def _fill_run(self, buf: memoryview, pos: int, end: int) -> int:
        """The hot path: copy this payload, and those of the whole data packets of the same
        file that follow it, into the sink's target in one tight loop. Anything unusual (a
        packet of another type or file, a full target, a limit) is left to the general path,
        which checks it again and raises if needed."""
        sink = self._payload_sink
        assert sink is not None
        fid = self._payload_file
        session = self.sessions.sessions[fid]
        target = sink.target()
        room = len(target)
        filled = 0
        left = self._payload_left
        max_payload = self.max_payload
        transferred, size = session.transferred, session.size
        data_type = int(T.FILE_SYNC_DATA)
        unpack_from = DATA_HEADER.unpack_from
        packets = wire = 0
        while True:
            # (plain comparisons and locals: this loop runs once per packet)
            take = left
            if end - pos < take:
                take = end - pos
            if room - filled < take:
                take = room - filled
            target[filled : filled + take] = buf[pos : pos + take]
            filled += take
            pos += take
            left -= take
            if left or filled == room or end - pos < DATA_HEADER_SIZE:
                break
            length, ptype, next_fid = unpack_from(buf, pos)
            nbytes = length - DATA_HEADER_SIZE
            if (
                ptype != data_type
                or next_fid != fid
                or nbytes < 0
                or nbytes > max_payload
                or transferred + nbytes > size
            ):
                break
            transferred += nbytes
            left = nbytes
            pos += DATA_HEADER_SIZE
            packets += 1
            wire += length
        session.transferred = transferred
        self.rx_packets[T.FILE_SYNC_DATA] += packets
        self.rx_bytes[T.FILE_SYNC_DATA] += wire
        self.coding.payload[0] += wire - packets * DATA_HEADER_SIZE
        sink.advance(filled)
        self._payload_left = left
        return pos

    def _take_payload(self, buf: memoryview, pos: int, end: int, events: list[Event]) -> int:
        take = min(self._payload_left, end - pos)
        if self._skip_payload:
            self._payload_left -= take
            return pos + take
        chunk = buf[pos : pos + take]
        sink = self._payload_sink
        if self._zstd_session is not None:
            self._events = events
            self.coding.inflate(self._zstd_session, chunk, self._deliver)
        elif sink is None:
            events.append(DataChunk(self._payload_file, chunk))
            self._evented.add(self._payload_file)
        else:
            self._copy(sink, chunk)
        self._payload_left -= take
        return pos + take

    @staticmethod
    def _copy(sink: PayloadSink, chunk: memoryview | bytes) -> None:
        while chunk:
            target = sink.target()
            if not target:
                raise LocalProtocolError("sink is full", ErrorCode.INTERNAL)
            n = min(len(target), len(chunk))
            target[:n] = chunk[:n]
            sink.advance(n)
            chunk = chunk[n:]

    def _deliver(self, data: bytes) -> None:
        """Original bytes out of a compressed payload: to the file's sink, or an event."""
        fid = self._payload_file
        sink = self._sinks.get(fid)
        if sink is None:
            self._events.append(DataChunk(fid, data))
        else:
            self._copy(sink, data)

    def _inflated_batch(self, msg: m.SmallFileBatchZstd) -> m.SmallFileBatch:
        body = self.coding.inflate_batch(msg, self._batch_limit)
        return decode_body(T.SMALL_FILE_BATCH, body)  # type: ignore[return-value]

    # -- outbound ----------------------------------------------------------------------------

    def send(self, msg: m.Message) -> bytes:
        """Check that this side may send *msg* now, apply it, and return its packet."""
        if self.phase is ConnPhase.ERROR:
            raise LocalProtocolError("connection already failed")
        if isinstance(msg, m.FileSyncData):
            if self.compressed(msg.file_id):
                return self.frame_data(msg.file_id, memoryview(msg.payload))
            return self.data_header(msg.file_id, len(msg.payload)) + msg.payload
        if isinstance(msg, m.SmallFileBatchZstd):
            self._require_ready(T.SMALL_FILE_BATCH_ZSTD, self.role)
            raise LocalProtocolError(
                "send the SmallFileBatch: the connection compresses it when agreed",
                ErrorCode.UNEXPECTED_PACKET,
            )
        packet = encode(msg)
        limit = self._batch_limit if isinstance(msg, m.SmallFileBatch) else self.max_packet
        if len(packet) > limit:
            raise LocalProtocolError(
                f"{type(msg).__name__} of {len(packet)} bytes exceeds the maximum packet size "
                f"{limit}",
                ErrorCode.PACKET_TOO_LARGE,
            )
        tail = b""
        if isinstance(msg, m.SmallFileBatch):
            self.coding.payload[1] += len(packet) - HEADER_SIZE
            if self.coding.agreed and self.coding.batches:
                packed = self.coding.deflate_batch(packet)
                packet = packet if packed is None else encode(packed)
        elif isinstance(msg, m.FileSyncCheckHash):
            tail = self.new_frame(msg.file_id)
        self._apply(msg, self.role)
        ptype = packet[4]
        self.tx_packets[ptype] += 1
        self.tx_bytes[ptype] += len(packet)
        return tail + packet if tail else packet

    def new_frame(self, file_id: int) -> bytes:
        """The last packets of a compressed session's frame (nothing for a plain session):
        due before its CheckHash, or before its next bytes start a frame at the current
        ``coding.level`` (the stream may hold several frames)."""
        session = self.sessions.sessions.get(file_id)
        if session is None or not session.zstd:
            return b""
        return self._pack_data(file_id, self.coding.finish(session))

    def data_header(self, file_id: int, nbytes: int) -> bytes:
        """Header of a FileSyncData packet whose *nbytes* payload the caller sends after it
        (not in a compressed session: see ``compressed``)."""
        if nbytes + DATA_HEADER_SIZE > self.max_packet:
            raise LocalProtocolError(
                f"{nbytes} payload bytes exceed the maximum packet size {self.max_packet}",
                ErrorCode.PACKET_TOO_LARGE,
            )
        self._require_ready(T.FILE_SYNC_DATA, self.role)
        if self.sessions.count_data(file_id, nbytes, self.role).zstd:
            raise LocalProtocolError(f"file {file_id} is compressed: its bytes go by frame_data")
        self.coding.payload[1] += nbytes
        self.tx_packets[T.FILE_SYNC_DATA] += 1
        self.tx_bytes[T.FILE_SYNC_DATA] += nbytes + DATA_HEADER_SIZE
        return DATA_HEADER.pack(nbytes + DATA_HEADER_SIZE, T.FILE_SYNC_DATA, file_id)

    def compressed(self, file_id: int) -> bool:
        """Whether *file_id*'s payload is sent compressed (then only by ``frame_data``)."""
        session = self.sessions.sessions.get(file_id)
        return session is not None and session.zstd

    def frame_data(self, file_id: int, data: memoryview) -> bytes:
        """*data* as FileSyncData packets of the largest allowed size, in one bytes object
        (compressed first, in a compressed session: then maybe none until more comes).

        One accounting step for the whole chunk and one join keep small packets cheap; the
        result is immutable, so a transport may hold on to it without copying.
        """
        self._require_ready(T.FILE_SYNC_DATA, self.role)
        session = self.sessions.count_data(file_id, len(data), self.role)
        if session.zstd:
            return self._pack_data(file_id, self.coding.deflate(session, data))
        self.coding.payload[1] += len(data)
        return self._pack_data(file_id, data)

    def _pack_data(self, file_id: int, data: memoryview | bytes) -> bytes:
        step = self.max_payload
        full = DATA_HEADER.pack(self.max_packet, T.FILE_SYNC_DATA, file_id)
        total = len(data)
        parts: list[bytes | memoryview] = []
        append = parts.append
        last = total - total % step
        for pos in range(0, last, step):
            append(full)
            append(data[pos : pos + step])
        if last < total:
            append(DATA_HEADER.pack(total - last + DATA_HEADER_SIZE, T.FILE_SYNC_DATA, file_id))
            append(data[last:])
        packets = len(parts) // 2
        self.tx_packets[T.FILE_SYNC_DATA] += packets
        self.tx_bytes[T.FILE_SYNC_DATA] += total + packets * DATA_HEADER_SIZE
        return b"".join(parts)

    def data_traffic(self) -> tuple[int, int, int, int]:
        """File bytes received and sent so far (counted before compression), each next to the
        bytes of the data packets and batches that carried them: (payload in, wire in,
        payload out, wire out)."""
        return (self.coding.payload[0], _data_bytes(self.rx_bytes),
                self.coding.payload[1], _data_bytes(self.tx_bytes))  # fmt: skip

    def traffic(self) -> list[list[int]]:
        """Packets and bytes received and sent so far, each a list indexed by packet type."""
        return [self.rx_packets, self.rx_bytes, self.tx_packets, self.tx_bytes]

    @property
    def mid_packet(self) -> bool:
        """A data packet's payload is still arriving."""
        return self._payload_left > 0

    @property
    def max_payload(self) -> int:
        return self.max_packet - DATA_HEADER_SIZE

    def _set_max_packet(self, max_packet: int) -> None:
        self.max_packet = max_packet
        self._batch_limit = batch_packet_limit(max_packet)

    def negotiate(self, proposed: int) -> int:
        """Server side: the packet size to agree on for a client's proposal."""
        if proposed < MIN_MAX_PACKET:
            raise LocalProtocolError(f"proposed packet size {proposed} is below {MIN_MAX_PACKET}")
        return min(proposed, self.max_packet_limit)

    # -- shared rules ------------------------------------------------------------------------

    def _require_ready(self, ptype: T, sender: Role) -> None:
        sends = self._sends if sender is self.role else self._peer_sends
        if ptype not in sends:
            raise LocalProtocolError(
                f"{ptype.name} may not be sent by the {sender.name.lower()}",
                ErrorCode.UNEXPECTED_PACKET,
            )
        if self.phase is not ConnPhase.READY:
            raise LocalProtocolError(
                f"{ptype.name} before the handshake completed", ErrorCode.UNEXPECTED_PACKET
            )

    def _stale(self, file_id: int) -> bool:
        """A packet of the peer's for *file_id* crossed the Error that ended its session here."""
        return file_id in self._ended and self.sessions.phase(file_id) is None

    def _apply(self, msg: m.Message, sender: Role) -> bool:
        """Apply *msg*; False if it is a stale packet to drop (it crossed our Error)."""
        ptype = packet_type_of(msg)
        if isinstance(msg, m.Error):
            self._apply_error(msg, sender)
            return True
        if ptype is T.VERSION_HANDSHAKE or ptype is T.VERSION_HANDSHAKE_RESPONSE:
            self._apply_handshake(msg, sender)
            return True
        self._require_ready(ptype, sender)
        step = session_step(msg)
        if step is not None:
            file_id, what, size, offset = step
            if isinstance(msg, _WITH_FLAGS) and msg.flags:
                self.coding.check_agreed()
            if sender is not self.role and file_id in self._ended:
                if what in (Step.INIT, Step.DOWNLOAD_REQUEST):
                    del self._ended[file_id]  # the peer saw our Error and reuses the id
                elif self._stale(file_id):
                    return False
            self.sessions.apply(file_id, what, sender, size, offset)
            if what in _FLAGGED:
                session = self.sessions.sessions.get(file_id)
                if session is not None:
                    self.coding.flag_session(session, what, msg.flags)  # type: ignore[union-attr]
            if what in (Step.CHECK_HASH, Step.CANCEL) and sender is not self.role:
                self.detach_sink(file_id)
        elif type(msg) in RESPONSE_OF:
            if isinstance(msg, m.SubscribeRequest) and (
                self.subscribed or m.SubscribeResponse in self.requests.pending.values()
            ):
                raise LocalProtocolError("already subscribed", ErrorCode.UNEXPECTED_PACKET)
            if isinstance(msg, m.SmallFileBatch):
                self.batches.check(msg, self.max_packet)
            self.requests.open(msg.request_id, RESPONSE_OF[type(msg)])  # type: ignore[union-attr]
            if isinstance(msg, m.SmallFileBatch):
                self.batches.open(msg)
        elif type(msg) in RESPONSES:
            if isinstance(msg, m.SmallFileBatchResponse):
                self.batches.close(msg)
            self.requests.close(msg.request_id, type(msg))  # type: ignore[union-attr]
            if isinstance(msg, m.SubscribeResponse) and msg.status is m.LookupStatus.OK:
                self.subscribed = True
        elif isinstance(msg, m.ChangeNotification) and not self.subscribed:
            raise LocalProtocolError(
                "ChangeNotification without a subscription", ErrorCode.UNEXPECTED_PACKET
            )
        return True

    def _apply_error(self, msg: m.Error, sender: Role) -> None:
        if msg.file_id == NO_FILE:
            self.phase = ConnPhase.CLOSED
            return
        ended = self.sessions.end(msg.file_id)
        self.detach_sink(msg.file_id)
        if sender is self.role and ended:
            self._ended[msg.file_id] = None
            if self._payload_left and self._payload_file == msg.file_id:
                self._skip_payload = True  # the rest of the payload arriving is stale too
            if len(self._ended) > self.sessions.max_in_flight:
                del self._ended[next(iter(self._ended))]
        elif sender is not self.role:
            self._ended.pop(msg.file_id, None)

    def _apply_handshake(self, msg: m.Message, sender: Role) -> None:
        # the phase in which this side awaits the handshake reply (sent or received)
        waiting = (
            ConnPhase.AWAIT_HANDSHAKE_RESPONSE
            if self.role is Role.CLIENT
            else ConnPhase.HANDSHAKE_RECEIVED
        )
        if isinstance(msg, m.VersionHandshake):
            if sender is not Role.CLIENT or self.phase is not ConnPhase.HANDSHAKE:
                raise LocalProtocolError(
                    f"VersionHandshake not allowed now ({self.phase.name})",
                    ErrorCode.UNEXPECTED_PACKET,
                )
            if msg.max_packet < MIN_MAX_PACKET:
                raise LocalProtocolError(f"proposed packet size {msg.max_packet} too small")
            self._proposed = msg.max_packet
            self.coding.handshake(msg)
            self.phase = waiting
            return
        assert isinstance(msg, m.VersionHandshakeResponse)
        if sender is not Role.SERVER or self.phase is not waiting:
            raise LocalProtocolError(
                f"VersionHandshakeResponse not allowed now ({self.phase.name})",
                ErrorCode.UNEXPECTED_PACKET,
            )
        if msg.status is not m.HandshakeStatus.OK:
            self.phase = ConnPhase.CLOSED
            return
        limit = min(self.max_packet_limit, self._proposed)
        if not MIN_MAX_PACKET <= msg.max_packet <= limit:
            raise LocalProtocolError(
                f"agreed packet size {msg.max_packet} outside {MIN_MAX_PACKET}..{limit}"
            )
        if msg.max_in_flight < 1:
            raise LocalProtocolError("an in-flight limit of 0 allows nothing")
        self._set_max_packet(msg.max_packet)
        self.coding.handshake(msg)
        # Both ends count by the server's limit from here on: a client that would open one
        # session or request too many fails on its own side, before the server ends it all.
        self.sessions.max_in_flight = self.requests.max_in_flight = msg.max_in_flight
        self.phase = ConnPhase.READY
