"""A hypothesis stateful test of the upload and download session state machines, end to end.

``tests/test_state.py`` checks ``SessionTable`` alone and ``tests/test_connection.py`` walks legal
moves one whole packet at a time. Here a real client ``FSConnection`` and a real server
``FSConnection`` (``Role.CLIENT`` / ``Role.SERVER``) talk through two in-memory wires, one per
direction, after a ``VersionHandshake``. What one side ``send``s (or frames with ``frame_data`` /
``data_header``) is appended to its wire; a ``deliver`` rule feeds the peer the next fragment of
any length, so packets arrive split anywhere, data headers before their payload, several
packets at once, and both directions interleave: each side really lags the other by what is in
flight.

The test keeps its own model, written from docs/PROTOCOL.md (sections 3.1, 5.11, 6) and keyed by
*packet* rather than by ``Step``, so that ``rules.session_step``, ``state.TRANSITIONS``, the byte
accounting and the crossing-``Error`` rule of ``FSConnection`` are all under test:

- ``view[role]``: every session as that side must see it (phase, size, bytes counted);
- ``ended[role]``: the file ids that side ended with an ``Error`` (section 5.11).

Every action rule takes a file id from a ``Bundle`` and has the side that would send the packet
try it. The model decides first: a legal packet must be accepted, then the receiver's model is
updated when (and only when) the packet's bytes reach the receiver; an illegal packet must raise
``LocalProtocolError`` with the model's code and change nothing, and the same packet injected as
raw bytes into a copy of the receiver must raise ``RemoteProtocolError`` with the code the
receiver's model predicts (or be dropped, or accepted, when the receiver lags the sender).

Payload is real: uploads and downloads carry random bytes, framed in random chunk sizes, landing
in ``DataChunk`` events or in a ``PayloadSink`` (attached at random, sometimes mid-stream), and
hash verdicts are computed from what the receiver actually got.

Two restrictions keep the generated peers within what the protocol can promise (see
``session_error`` and ``open_session``): a client never reuses a file id it ended with an
``Error`` (5.11 says it MUST NOT), and the server sends a session ``Error`` in a phase where it is
the client's turn (``UPLOADING``, ``AWAIT_VERDICT``) only when the client has not already ended
that session by a packet still in flight, while the client never reopens an id whose server
``Error`` is still in flight. Without the last two, a client that ends a session by
``FileSyncCancel`` or a download verdict and reopens the id at once can have its *new* session
killed by the server's crossing ``Error``, while the server keeps it open. (The reference server
only sends session ``Error``s when it is its own turn, so it never hits this.)
"""

from __future__ import annotations

import copy
import random
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import Phase as Phase_
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from common import messages as m
from common.codec import DATA_HEADER, encode
from common.connection import ConnPhase, DataChunk, FSConnection
from common.digest import digest_of
from common.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from common.limits import (
    ANY_VERSION,
    DATA_HEADER_SIZE,
    MAGIC,
    NO_FILE,
    PROTOCOL_VERSION,
)
from common.state import Phase, Role

C, S = Role.CLIENT, Role.SERVER
LIMIT = 3
"""Sessions in flight per connection: small, so the limit is hit often."""
MAX_HASH_RETRIES = 3
"""The server gives up with Error(HASH_MISMATCH) after this many retries (PROTOCOL.md 5.3)."""

# -- the model ---------------------------------------------------------------------------------

CLIENT_ONLY = (m.FileSyncInit, m.FileSyncCancel, m.DownloadRequest)
SERVER_ONLY = (m.FileSyncInitResponse, m.FileSyncRetryUpload, m.FileSyncFinish, m.DownloadResponse)
"""PROTOCOL.md 3.1; the other session packets (data, CheckHash, its response, Error) go both
ways."""

NEXT: dict[tuple[Phase | None, str, Role], Phase | None] = {
    # upload (PROTOCOL.md 5.2-5.4, 6.2); None is "no session" and, as a result, "session over"
    (None, "init", C): Phase.AWAIT_INIT_RESPONSE,
    (Phase.AWAIT_INIT_RESPONSE, "accepted", S): Phase.UPLOADING,
    (Phase.AWAIT_INIT_RESPONSE, "already_have", S): Phase.AWAIT_FINISH,
    (Phase.AWAIT_INIT_RESPONSE, "refused", S): None,
    (Phase.UPLOADING, "check_hash", C): Phase.AWAIT_HASH_RESULT,
    (Phase.UPLOADING, "cancel", C): None,
    (Phase.AWAIT_HASH_RESULT, "hash_ok", S): Phase.AWAIT_FINISH,
    (Phase.AWAIT_HASH_RESULT, "hash_mismatch", S): Phase.AWAIT_RETRY,
    (Phase.AWAIT_RETRY, "retry", S): Phase.UPLOADING,
    (Phase.AWAIT_FINISH, "finish", S): None,
    # download (PROTOCOL.md 5.6)
    (None, "download", C): Phase.AWAIT_DOWNLOAD_RESPONSE,
    (Phase.AWAIT_DOWNLOAD_RESPONSE, "found", S): Phase.DOWNLOADING,
    (Phase.AWAIT_DOWNLOAD_RESPONSE, "refused", S): None,
    (Phase.DOWNLOADING, "check_hash", S): Phase.AWAIT_VERDICT,
    (Phase.AWAIT_VERDICT, "hash_ok", C): None,
    (Phase.AWAIT_VERDICT, "hash_mismatch", C): None,
}
DATA_PHASE = {C: Phase.UPLOADING, S: Phase.DOWNLOADING}
"""Who may send FileSyncData, and in which phase (PROTOCOL.md 6.3)."""
SERVER_TURN = {
    Phase.AWAIT_INIT_RESPONSE,
    Phase.AWAIT_HASH_RESULT,
    Phase.AWAIT_RETRY,
    Phase.AWAIT_FINISH,
    Phase.AWAIT_DOWNLOAD_RESPONSE,
    Phase.DOWNLOADING,
}
OPENERS = {"init": "upload", "download": "download"}
INIT_LABELS = {
    m.InitStatus.ACCEPTED: "accepted",
    m.InitStatus.ALREADY_HAVE_CONTENT: "already_have",
}

OK, DROP = "ok", "drop"
Outcome = str | ErrorCode
"""OK, DROP (a packet that crossed this side's Error), or the error code of a violation."""


@dataclass
class ModelSession:
    kind: str
    phase: Phase
    size: int
    transferred: int = 0


View = dict[int, ModelSession]
Ended = dict[int, None]
"""The ids a side ended with an Error, oldest first; it forgets the oldest beyond LIMIT."""


def classify(msg: m.Message) -> tuple[int, str, int | None]:
    """File id, model label and announced size of a session packet (not Error, not data)."""
    match msg:
        case m.FileSyncInit(file_id=fid, size=size):
            return fid, "init", size
        case m.FileSyncInitResponse(file_id=fid, status=status):
            return fid, INIT_LABELS.get(status, "refused"), None
        case m.FileSyncCheckHash(file_id=fid):
            return fid, "check_hash", None
        case m.FileSyncCheckHashResponse(file_id=fid, status=status):
            return fid, "hash_ok" if status is m.HashStatus.OK else "hash_mismatch", None
        case m.FileSyncRetryUpload(file_id=fid):
            return fid, "retry", None
        case m.FileSyncFinish(file_id=fid):
            return fid, "finish", None
        case m.FileSyncCancel(file_id=fid):
            return fid, "cancel", None
        case m.DownloadRequest(file_id=fid):
            return fid, "download", None
        case m.DownloadResponse(file_id=fid, status=status, entry=entry):
            if status is m.LookupStatus.OK:
                assert entry is not None
                return fid, "found", entry.size
            return fid, "refused", None
    raise AssertionError(f"not a session packet: {msg!r}")


def judge(view: View, ended: Ended, msg: m.Message, sender: Role, local: bool) -> Outcome:
    """What the side with *view* must do with *msg* from *sender* (``local``: it sends it)."""
    if isinstance(msg, m.Error):
        return OK
    if (isinstance(msg, CLIENT_ONLY) and sender is not C) or (
        isinstance(msg, SERVER_ONLY) and sender is not S
    ):
        return ErrorCode.UNEXPECTED_PACKET
    fid, label, _ = classify(msg)
    if not local and fid in ended and label not in OPENERS and fid not in view:
        return DROP
    current = view.get(fid)
    key = (current.phase if current else None, label, sender)
    if key not in NEXT:
        return ErrorCode.UNEXPECTED_PACKET if current else ErrorCode.UNKNOWN_FILE
    if current is None:
        if fid == NO_FILE:
            return ErrorCode.MALFORMED
        if len(view) >= LIMIT:
            return ErrorCode.LIMIT_EXCEEDED
    elif label == "check_hash" and current.transferred != current.size:
        return ErrorCode.UNEXPECTED_PACKET
    return OK


def commit(view: View, ended: Ended, msg: m.Message, sender: Role, local: bool) -> None:
    """Apply *msg*, which ``judge`` found OK, to a side's model."""
    if isinstance(msg, m.Error):
        had = view.pop(msg.file_id, None) is not None
        if local and had:
            ended[msg.file_id] = None
            if len(ended) > LIMIT:
                del ended[next(iter(ended))]
        elif not local:
            ended.pop(msg.file_id, None)
        return
    fid, label, size = classify(msg)
    if not local and label in OPENERS:
        ended.pop(fid, None)  # the peer saw our Error and reuses the id
    current = view.get(fid)
    nxt = NEXT[(current.phase if current else None, label, sender)]
    if nxt is None:
        del view[fid]
    elif current is None:
        view[fid] = ModelSession(OPENERS[label], nxt, size or 0)
    else:
        current.phase = nxt
        if size is not None:
            current.size = size
        if label == "retry":
            current.transferred = 0


def judge_data(
    view: View, ended: Ended, fid: int, nbytes: int, sender: Role, local: bool
) -> Outcome:
    """A FileSyncData header for *fid* announcing *nbytes* (PROTOCOL.md 1.5 step 3, 6.3)."""
    if not local and fid in ended and fid not in view:
        return DROP
    current = view.get(fid)
    if current is None:
        return ErrorCode.UNKNOWN_FILE
    if current.phase is not DATA_PHASE[sender]:
        return ErrorCode.UNEXPECTED_PACKET
    if current.transferred + nbytes > current.size:
        return ErrorCode.LIMIT_EXCEEDED
    return OK


def illegal_kind(session: ModelSession | None, move: m.Message | int, code: ErrorCode) -> str:
    """A label for the statistics (``--hypothesis-show-statistics``)."""
    phase = session.phase if session else None
    if isinstance(move, int):
        if code is ErrorCode.LIMIT_EXCEEDED:
            return "payload beyond the declared size"
        return f"payload in {phase.name if phase else 'no session'}"
    if code is ErrorCode.MALFORMED:
        return "a session with the reserved file id"
    if code is ErrorCode.LIMIT_EXCEEDED:
        return "one session over the limit"
    if isinstance(move, (m.FileSyncInit, m.DownloadRequest)) and session:
        return "a reused open file id"
    if isinstance(move, m.FileSyncFinish) and phase in (Phase.UPLOADING, Phase.AWAIT_HASH_RESULT):
        return "Finish before the hash is OK"
    if isinstance(move, m.FileSyncCheckHash) and phase in DATA_PHASE.values():
        return "CheckHash before every byte"
    return f"{type(move).__name__} ({code.name})"


# -- plumbing ----------------------------------------------------------------------------------


class RecordingSink:
    """A PayloadSink over a bytearray (deep-copyable, unlike a ViewSink over shared memory)."""

    def __init__(self, capacity: int) -> None:
        self.buf = bytearray(capacity)
        self.pos = 0

    def target(self) -> memoryview:
        return memoryview(self.buf)[self.pos :]

    def advance(self, nbytes: int) -> None:
        self.pos += nbytes

    @property
    def data(self) -> bytes:
        return bytes(self.buf[: self.pos])


@dataclass
class Packet:
    """One packet on a wire: ``start``/``end`` are offsets in everything the wire carried."""

    start: int
    end: int
    fid: int | None
    msg: m.Message | None = None
    """None for FileSyncData."""
    payload: bytes = b""
    info: dict = field(default_factory=dict)
    header_done: bool = False
    skipped: bool = False


class Wire:
    """Bytes one side sent and the other has not been fed yet, with the packets they hold."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.fed = 0
        self.packets: deque[Packet] = deque()

    @property
    def sent(self) -> int:
        return self.fed + len(self.buf)

    def push_message(self, data: bytes, msg: m.Message, info: dict) -> None:
        fid = getattr(msg, "file_id", None)
        self.packets.append(Packet(self.sent, self.sent + len(data), fid, msg, info=info))
        self.buf += data

    def push_data(self, data: bytes, fid: int, max_packet: int) -> bytes:
        """Append framed payload; return the payload it carries (checking the framing)."""
        pos, payload = 0, bytearray()
        while pos < len(data):
            length, ptype, packet_fid = DATA_HEADER.unpack_from(data, pos)
            assert ptype == m.PacketType.FILE_SYNC_DATA and packet_fid == fid
            assert DATA_HEADER_SIZE <= length <= max_packet
            body = bytes(data[pos + DATA_HEADER_SIZE : pos + length])
            self.packets.append(Packet(self.sent + pos, self.sent + pos + length, fid, None, body))
            payload += body
            pos += length
        assert pos == len(data), "frame_data produced a partial packet"
        self.buf += data
        return bytes(payload)

    def at_boundary(self) -> bool:
        """The receiver holds no partial packet: raw bytes may be injected now."""
        return not self.packets or self.packets[0].start == self.fed

    def carries(self, fid: int, *kinds: type) -> bool:
        """A packet for *fid* (of one of *kinds*, if given) is in flight."""
        return any(p.fid == fid and (not kinds or isinstance(p.msg, kinds)) for p in self.packets)


def snapshot(conn: FSConnection) -> tuple:
    """Everything a refused send must leave untouched."""
    return (
        conn.phase,
        {fid: (s.phase, s.size, s.transferred) for fid, s in conn.sessions.sessions.items()},
        dict(conn.requests.pending),
        list(conn._ended),
        dict(conn._sinks),
        list(conn.tx_packets),
        list(conn.tx_bytes),
    )


def clone_of(conn: FSConnection) -> FSConnection:
    """A deep copy of a connection (its traffic counters and role tables copied cheaply)."""
    memo: dict[int, object] = {}
    for value in vars(conn).values():
        if isinstance(value, frozenset):
            memo[id(value)] = value
        elif isinstance(value, list) and (not value or type(value[0]) is int):
            memo[id(value)] = value.copy()
    return copy.deepcopy(conn, memo)


def content_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Outgoing:
    """The bytes a sender is sending in the current attempt of a session."""

    content: bytes
    sent: int = 0


sizes = st.one_of(st.integers(0, 40), st.integers(0, 13_000))
file_id_values = st.one_of(st.integers(0, 5), st.integers(0, NO_FILE - 1))
seeds = st.integers(0, 2**32)
amounts = st.one_of(st.integers(1, 12), st.integers(1, 6000), st.just(1 << 30))
hows = st.sampled_from(["frame", "header", "send"])
init_statuses = st.one_of(st.just(m.InitStatus.ACCEPTED), st.sampled_from(m.InitStatus))
ACTIONS = [
    *("open_upload", "open_download", "answer_init", "data", "check_hash", "verdict"),
    *("retry", "finish", "answer_download", "cancel"),
]
error_codes = st.sampled_from([ErrorCode.INTERNAL, ErrorCode.CONFLICT, ErrorCode.TIMEOUT])


class SessionMachine(RuleBasedStateMachine):
    file_ids = Bundle("file_ids")

    # -- setup ---------------------------------------------------------------------------------

    @initialize(
        target=file_ids,
        proposal=st.sampled_from([4096, 5000, 65536]),
        server_limit=st.sampled_from([4096, 1 << 20]),
        fids=st.lists(st.integers(0, 5), min_size=2, max_size=4),
    )
    def connect(self, proposal: int, server_limit: int, fids: list[int]):
        self.conns = {
            C: FSConnection(C, max_in_flight=LIMIT),
            S: FSConnection(S, max_packet_limit=server_limit, max_in_flight=LIMIT),
        }
        client, server = self.conns[C], self.conns[S]
        hello = m.VersionHandshake(MAGIC, PROTOCOL_VERSION, proposal, "client-1", "share", b"")
        assert server.feed(client.send(hello)) == [hello]
        agreed = server.negotiate(proposal)
        reply = m.VersionHandshakeResponse(
            m.HandshakeStatus.OK, PROTOCOL_VERSION, agreed, 0, bytes(16), LIMIT, ""
        )
        assert client.feed(server.send(reply)) == [reply]
        assert client.phase is server.phase is ConnPhase.READY
        assert client.max_packet == server.max_packet == min(proposal, server_limit)
        self.wires = {C: Wire(), S: Wire()}  # keyed by the sending side
        self.view: dict[Role, View] = {C: {}, S: {}}
        self.ended: dict[Role, Ended] = {C: {}, S: {}}
        self.outgoing: dict[Role, dict[int, Outgoing]] = {C: {}, S: {}}
        # the sender's Outgoing that each receiver's session is reading: set when the opening
        # packet (FileSyncInit, DownloadResponse OK) arrives, as the sender may have ended
        # that session and opened a new one with the same id by then
        self.source: dict[Role, dict[int, Outgoing]] = {C: {}, S: {}}
        # receiving side: payload from DataChunk events, the current sink, what the wire
        # delivered (the truth), the digest claimed by CheckHash and whether it was honest
        self.got: dict[Role, dict[int, bytearray]] = {C: {}, S: {}}
        self.sinks: dict[Role, dict[int, RecordingSink]] = {C: {}, S: {}}
        self.attached: dict[Role, set[int]] = {C: set(), S: set()}
        self.expected: dict[Role, dict[int, bytearray]] = {C: {}, S: {}}
        self.claims: dict[Role, dict[int, tuple[bytes, bool]]] = {C: {}, S: {}}
        self.entry_digests: dict[int, bytes] = {}
        self.attempts: dict[int, int] = {}
        self.sink_wanted: set[int] = set()
        self.known: set[int] = set(fids)
        return multiple(*fids)

    @rule(target=file_ids, fid=file_id_values)
    def new_file_id(self, fid: int) -> int:
        self.known.add(fid)
        return fid

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def peer(role: Role) -> Role:
        return S if role is C else C

    def received(self, role: Role, fid: int) -> bytes:
        sink = self.sinks[role].get(fid)
        return bytes(self.got[role].get(fid, b"")) + (sink.data if sink else b"")

    def fresh(self, role: Role, fid: int) -> None:
        """A new attempt starts arriving at *role* for *fid*: forget the old bytes."""
        self.got[role][fid] = bytearray()
        self.expected[role][fid] = bytearray()
        self.sinks[role].pop(fid, None)
        self.conns[role].detach_sink(fid)
        self.attached[role].discard(fid)

    def attach(self, role: Role, fid: int, capacity: int) -> None:
        sink = RecordingSink(capacity)
        self.conns[role].attach_sink(fid, sink)
        self.sinks[role][fid] = sink
        self.attached[role].add(fid)

    def refused(self, sender: Role, action, code: ErrorCode, label: str) -> None:
        """*action*, a send by *sender*, must raise LocalProtocolError(*code*) and change
        nothing."""
        conn = self.conns[sender]
        before = snapshot(conn)
        with pytest.raises(LocalProtocolError) as info:
            action()
        assert info.value.code is code, (info.value, code)
        assert snapshot(conn) == before, "a refused send changed the connection"
        event(f"refused: {label}")

    def inject(self, sender: Role, raw: bytes, expected: Outcome, msg: m.Message | None) -> None:
        """Feed *raw* to a copy of *sender*'s peer, which must do what its model says."""
        clone = clone_of(self.conns[self.peer(sender)])
        if isinstance(expected, ErrorCode):
            with pytest.raises(RemoteProtocolError) as info:
                clone.feed(raw)
            assert info.value.code is expected, (info.value, expected)
            assert clone.phase is ConnPhase.ERROR
            event(f"refused remotely: {expected.name}")
            return
        events = clone.feed(raw)
        if msg is not None:
            assert events == ([] if expected == DROP else [msg])
        event(f"injected, receiver {'dropped' if expected == DROP else 'accepted'} it (lag)")

    def attempt(self, sender: Role, msg: m.Message, info: dict | None = None) -> bool:
        """*sender* tries to send *msg*: sent if the model allows it, else refused both ways."""
        conn = self.conns[sender]
        outcome = judge(self.view[sender], self.ended[sender], msg, sender, local=True)
        if outcome != OK:
            assert isinstance(outcome, ErrorCode)
            session = self.view[sender].get(msg.file_id)  # type: ignore[union-attr]
            label = illegal_kind(session, msg, outcome)
            self.refused(sender, lambda: conn.send(msg), outcome, label)
            if self.wires[sender].at_boundary():
                receiver = self.peer(sender)
                expected = judge(self.view[receiver], self.ended[receiver], msg, sender, False)
                self.inject(sender, encode(msg), expected, msg)
            return False
        data = conn.send(msg)
        assert data == encode(msg)
        commit(self.view[sender], self.ended[sender], msg, sender, local=True)
        self.wires[sender].push_message(data, msg, info or {})
        return True

    def data_sender(self, fid: int, data: st.DataObject) -> Role:
        """The side that sends payload (and CheckHash) for *fid*: the uploader or the server."""
        up, down = self.view[C].get(fid), self.view[S].get(fid)
        if up is not None and up.kind == "upload":
            return C
        if down is not None and down.kind == "download":
            return S
        return data.draw(st.sampled_from([C, S]))

    def framed(self, sender: Role, fid: int, payload: bytes, how: str) -> bytes:
        conn = self.conns[sender]
        if how == "frame" or len(payload) > conn.max_payload:
            return conn.frame_data(fid, memoryview(payload))
        if how == "header":
            return conn.data_header(fid, len(payload)) + payload
        return conn.send(m.FileSyncData(fid, payload))

    def raw_data(self, fid: int, nbytes: int, max_packet: int) -> list[bytes]:
        step = max_packet - DATA_HEADER_SIZE
        sizes = [step] * (nbytes // step) + ([nbytes % step] if nbytes % step or not nbytes else [])
        return [
            DATA_HEADER.pack(n + DATA_HEADER_SIZE, m.PacketType.FILE_SYNC_DATA, fid) + bytes(n)
            for n in sizes
        ]

    def try_illegal_data(self, sender: Role, fid: int, nbytes: int, how: str) -> None:
        """Payload the model forbids: refused by the sender, and by a copy of the receiver."""
        code = judge_data(self.view[sender], self.ended[sender], fid, nbytes, sender, True)
        assert isinstance(code, ErrorCode)
        label = illegal_kind(self.view[sender].get(fid), nbytes, code)
        self.refused(sender, lambda: self.framed(sender, fid, bytes(nbytes), how), code, label)
        if not self.wires[sender].at_boundary():
            return
        receiver = self.peer(sender)
        view = copy.deepcopy(self.view[receiver])
        expected: Outcome = OK
        packets = self.raw_data(fid, nbytes, self.conns[receiver].max_packet)
        for packet in packets:
            n = len(packet) - DATA_HEADER_SIZE
            expected = judge_data(view, self.ended[receiver], fid, n, sender, False)
            if isinstance(expected, ErrorCode):
                break
            if expected == OK:
                view[fid].transferred += n
        self.inject(sender, b"".join(packets), expected, None)

    # -- uploads and downloads -----------------------------------------------------------------

    def may_open(self, fid: int) -> bool:
        """The restrictions of the module docstring, for a client reusing *fid*."""
        if fid in self.view[C]:
            return True  # reusing an open id: must be refused
        return fid not in self.ended[C] and not self.wires[S].carries(fid, m.Error)

    def open_upload(self, fid: int, size: int, seed: int, digest: bool) -> None:
        """FileSyncInit; refused if the id is open or LIMIT sessions are (PROTOCOL.md 6.2)."""
        if not self.may_open(fid):
            return
        content = content_of(seed, size)
        known = digest_of(content) if digest else None
        msg = m.FileSyncInit(fid, size, 1_700_000_000, 0o644, ANY_VERSION, known, f"up/{fid}")
        out = Outgoing(content)
        if self.attempt(C, msg, {"out": out}):
            self.outgoing[C][fid] = out

    def open_download(self, fid: int) -> None:
        """DownloadRequest; refused like an Init."""
        if self.may_open(fid):
            self.attempt(C, m.DownloadRequest(fid, 0, None, f"down/{fid}"))

    def moves(self, fid: int) -> list[str]:
        """Everything the protocol allows now for *fid*'s session(s), on either side."""
        moves = []
        client, server = self.view[C].get(fid), self.view[S].get(fid)
        if client is None and self.may_open(fid) and len(self.view[C]) < LIMIT:
            moves += ["open_upload", "open_download"]
        if client is not None and client.phase is Phase.UPLOADING:
            moves.append("check_hash" if client.transferred == client.size else "data")
        if server is not None and server.phase is Phase.DOWNLOADING:
            moves.append("check_hash" if server.transferred == server.size else "data")
        moves += {
            Phase.AWAIT_INIT_RESPONSE: ["answer_init"],
            Phase.AWAIT_HASH_RESULT: ["verdict"],
            Phase.AWAIT_RETRY: ["retry"],
            Phase.AWAIT_FINISH: ["finish"],
            Phase.AWAIT_DOWNLOAD_RESPONSE: ["answer_download"],
        }.get(server.phase if server else None, [])
        if client is not None and client.phase is Phase.AWAIT_VERDICT:
            moves.append("verdict")
        moves += [f"deliver_{r.name}" for r in (C, S) if self.wires[r].carries(fid)]
        return moves

    def perform(self, fid: int, move: str, data: st.DataObject) -> None:
        """Make *move* for *fid*, drawing its details; an illegal one must be refused."""
        if move.startswith("deliver_"):
            self.deliver(Role[move.removeprefix("deliver_")], data.draw(amounts))
        elif move == "open_upload":
            self.open_upload(fid, data.draw(sizes), data.draw(seeds), data.draw(st.booleans()))
        elif move == "answer_init":
            self.answer_init(fid, data.draw(init_statuses), data.draw(st.booleans()))
        elif move == "answer_download":
            found = data.draw(st.sampled_from([True, True, False]))
            self.answer_download(fid, found, data.draw(sizes), data.draw(seeds),
                                 data.draw(st.booleans()))  # fmt: skip
        elif move == "data":
            self.send_data(fid, data.draw(hows), data.draw(st.booleans()), data)
        elif move == "check_hash":
            self.check_hash(fid, data.draw(st.booleans()), data)
        elif move == "retry":
            self.retry(fid, data.draw(st.booleans()))
        elif move == "verdict":
            self.verdict(fid, data)
        else:
            getattr(self, move)(fid)

    @rule(fid=file_ids, data=st.data())
    def advance(self, fid: int, data: st.DataObject) -> None:
        """Up to twelve legal moves of *fid*'s sessions, each picked among what is allowed now:
        answers, payload in random chunks, CheckHash (honest or not), verdicts computed from the
        bytes that arrived, RetryUpload, Finish, or a fragment of a wire carrying one of its
        packets. (Cancel and Error are rules of their own, so that sessions also get to end.)"""
        for _ in range(data.draw(st.integers(1, 12))):
            moves = self.moves(fid)
            if not moves:
                return
            self.perform(fid, data.draw(st.sampled_from(moves)), data)

    @rule(fid=file_ids, move=st.sampled_from(ACTIONS), data=st.data())
    def any_move(self, fid: int, move: str, data: st.DataObject) -> None:
        """Any move for any file id: legal ones are made, the rest must be refused by the
        sender and by a copy of the receiver (data before Accepted, Finish before the hash is
        OK, a verdict nobody asked for, a Cancel of a download...)."""
        self.perform(fid, move, data)

    # The moves. Outside ``advance`` they are tried with any file id, when they are usually not
    # allowed; they must then be refused by the sender and by a copy of the receiver.

    def answer_init(self, fid: int, status: m.InitStatus, sink: bool) -> None:
        """FileSyncInitResponse: accepted, already have, or a refusal (no space, conflict...)."""
        version = 0 if status is m.InitStatus.ACCEPTED else 5
        msg = m.FileSyncInitResponse(fid, status, version, 0, "" if version == 0 else "no")
        if self.attempt(S, msg):
            event(f"upload: {status.name}")
            if status is m.InitStatus.ACCEPTED:
                self.fresh(S, fid)
                self.attempts[fid] = 0
                if sink:
                    self.attach(S, fid, self.view[S][fid].size)

    def send_data(self, fid: int, how: str, whole: bool, data: st.DataObject) -> None:
        """FileSyncData by frame_data, data_header or send, in a chunk of random size."""
        sender = self.data_sender(fid, data)
        session = self.view[sender].get(fid)
        if session is None or session.phase is not DATA_PHASE[sender]:
            self.try_illegal_data(sender, fid, data.draw(st.integers(0, 3)), how)
            return
        out = self.outgoing[sender][fid]
        left = session.size - session.transferred
        assert left == len(out.content) - out.sent
        nbytes = left if whole else data.draw(st.integers(0, left))
        chunk = out.content[out.sent : out.sent + nbytes]
        framed = self.framed(sender, fid, chunk, how)
        carried = self.wires[sender].push_data(framed, fid, self.conns[sender].max_packet)
        assert carried == chunk
        out.sent += nbytes
        session.transferred += nbytes

    def check_hash(self, fid: int, honest: bool, data: st.DataObject) -> None:
        """FileSyncCheckHash with the digest of what was sent, or a wrong one."""
        sender = self.data_sender(fid, data)
        out = self.outgoing[sender].get(fid, Outgoing(b""))
        sent = out.content[: out.sent]
        digest = digest_of(sent) if honest else digest_of(sent + b"?")
        self.attempt(sender, m.FileSyncCheckHash(fid, digest), {"bytes": sent, "honest": honest})

    def verdict(self, fid: int, data: st.DataObject) -> None:
        """FileSyncCheckHashResponse from the receiver of the payload, judged by what it got."""
        up, down = self.view[S].get(fid), self.view[C].get(fid)
        if up is not None and up.phase is Phase.AWAIT_HASH_RESULT:
            side = S
        elif down is not None and down.phase is Phase.AWAIT_VERDICT:
            side = C
        else:  # nothing to judge: whatever the verdict, it is refused
            side = data.draw(st.sampled_from([C, S]))
            status = data.draw(st.sampled_from(m.HashStatus))
            assert not self.attempt(side, m.FileSyncCheckHashResponse(fid, status, bytes(16)))
            return
        got = self.received(side, fid)
        claimed, honest = self.claims[side][fid]
        good = digest_of(got) == claimed
        if side is C:
            good = good and claimed == self.entry_digests[fid]
        assert good == honest, "the verdict must follow from the bytes that arrived"
        status = m.HashStatus.OK if good else m.HashStatus.MISMATCH
        assert self.attempt(side, m.FileSyncCheckHashResponse(fid, status, digest_of(got)))
        event(f"{'upload' if side is S else 'download'}: verdict {status.name}")

    def retry(self, fid: int, sink: bool) -> None:
        """FileSyncRetryUpload after a mismatch, or Error(HASH_MISMATCH) after the 3rd retry."""
        session = self.view[S].get(fid)
        if session is None or session.phase is not Phase.AWAIT_RETRY:
            assert not self.attempt(S, m.FileSyncRetryUpload(fid, 1))
            return
        if self.attempts[fid] == MAX_HASH_RETRIES:
            if not self.may_forget(S):
                return
            self.send_error(S, fid, ErrorCode.HASH_MISMATCH)
            event("upload: retries exhausted")
            return
        self.attempts[fid] += 1
        assert self.attempt(S, m.FileSyncRetryUpload(fid, self.attempts[fid]))
        self.fresh(S, fid)
        if sink:
            self.attach(S, fid, session.size)
        event("upload: retry")

    def finish(self, fid: int) -> None:
        """FileSyncFinish: only once the hash is OK (or the content was already there)."""
        if self.attempt(S, m.FileSyncFinish(fid, 7)):
            event("upload: finished")

    def answer_download(self, fid: int, found: bool, size: int, seed: int, sink: bool) -> None:
        """DownloadResponse: the entry (its size is the payload to come) or NOT_FOUND."""
        if not found:
            if self.attempt(S, m.DownloadResponse(fid, m.LookupStatus.NOT_FOUND, 0, "no", None)):
                event("download: not found")
            return
        content = content_of(seed, size)
        entry = m.FileEntry(size, 3, 0, 0o644, digest_of(content), f"down/{fid}")
        msg = m.DownloadResponse(fid, m.LookupStatus.OK, 0, "", entry)
        out = Outgoing(content)
        if self.attempt(S, msg, {"sink": sink, "out": out}):
            self.outgoing[S][fid] = out

    @rule(fid=file_ids)
    def cancel(self, fid: int) -> None:
        """FileSyncCancel: only while uploading."""
        if self.attempt(C, m.FileSyncCancel(fid)):
            event("upload: cancelled")

    def may_forget(self, side: Role) -> bool:
        """*side* may end one more session with an Error: it remembers LIMIT such ids, and the
        oldest, which it would forget, can get no more stale packets (PROTOCOL.md 5.11)."""
        if len(self.ended[side]) < LIMIT:
            return True
        oldest, peer = next(iter(self.ended[side])), self.peer(side)
        return oldest not in self.view[peer] and not self.wires[peer].carries(oldest)

    def send_error(self, side: Role, fid: int, code: ErrorCode) -> None:
        conn = self.conns[side]
        msg = m.Error(code, fid, "giving up on this file")
        had = fid in self.view[side]
        data = conn.send(msg)
        commit(self.view[side], self.ended[side], msg, side, local=True)
        self.attached[side].discard(fid)
        # a payload of that file still arriving is the peer's stale data now: skipped
        inbound = self.wires[self.peer(side)].packets
        if had and inbound and inbound[0].msg is None and inbound[0].fid == fid:
            inbound[0].skipped = inbound[0].skipped or inbound[0].header_done
        self.wires[side].push_message(data, msg, {})

    @rule(fid=file_ids, side=st.sampled_from([C, S]), code=error_codes)
    def session_error(self, fid: int, side: Role, code: ErrorCode) -> None:
        """End one session with an Error; every other session carries on."""
        if side is S:
            session = self.view[S].get(fid)
            if session is None:
                return  # the server only ends sessions it has
            if session.phase not in SERVER_TURN and self.wires[C].carries(
                fid, m.FileSyncCancel, m.FileSyncCheckHashResponse
            ):
                return  # see the module docstring
        if fid in self.view[side] and not self.may_forget(side):
            return
        self.send_error(side, fid, code)
        event(f"session error from the {side.name.lower()}")

    # -- illegal moves ---------------------------------------------------------------------------

    @rule(fid=file_ids, data=st.data())
    def illegal_move(self, fid: int, data: st.DataObject) -> None:
        """A packet the model forbids right now, from either side: data before it is accepted
        or beyond the declared size, CheckHash too early, Finish before the hash is OK, a reused
        open file id, the reserved file id, a packet of the other role, one session too many."""
        digest = bytes(range(16))
        entry = m.FileEntry(3, 1, 0, 0o644, digest, "x")
        messages: list[m.Message] = [
            m.FileSyncInit(fid, 3, 0, 0o644, ANY_VERSION, None, "x"),
            m.FileSyncInit(NO_FILE, 3, 0, 0o644, ANY_VERSION, None, "x"),
            m.DownloadRequest(fid, 0, None, "x"),
            m.DownloadRequest(NO_FILE, 0, None, "x"),
            m.FileSyncCancel(fid),
            m.FileSyncCheckHash(fid, digest),
            *(m.FileSyncCheckHashResponse(fid, st_, digest) for st_ in m.HashStatus),
            *(m.FileSyncInitResponse(fid, st_, 0, 0, "") for st_ in m.InitStatus),
            m.FileSyncRetryUpload(fid, 1),
            m.FileSyncFinish(fid, 9),
            m.DownloadResponse(fid, m.LookupStatus.OK, 0, "", entry),
            m.DownloadResponse(fid, m.LookupStatus.NOT_FOUND, 0, "", None),
        ]
        packets: list[tuple[Role, m.Message]] = []
        payloads: list[tuple[Role, int]] = []
        for sender in (C, S):
            view, ended = self.view[sender], self.ended[sender]
            packets += [
                (sender, msg)
                for msg in messages
                if isinstance(judge(view, ended, msg, sender, local=True), ErrorCode)
            ]
            session = view.get(fid)
            left = session.size - session.transferred if session else 0
            payloads += [
                (sender, nbytes)
                for nbytes in dict.fromkeys([0, 1, left + 1, left + 5000])
                if isinstance(judge_data(view, ended, fid, nbytes, sender, True), ErrorCode)
            ]
        if data.draw(st.booleans()):
            sender, nbytes = data.draw(st.sampled_from(payloads))
            self.try_illegal_data(sender, fid, nbytes, data.draw(hows))
        else:
            sender, msg = data.draw(st.sampled_from(packets))
            assert not self.attempt(sender, msg)

    # -- the wires -------------------------------------------------------------------------------

    def deliver(self, sender: Role, amount: int) -> None:
        """Feed the next *amount* bytes *sender* sent to its peer; check every event."""
        wire, receiver = self.wires[sender], self.peer(sender)
        conn = self.conns[receiver]
        chunk = bytes(wire.buf[:amount])
        del wire.buf[:amount]
        old = wire.fed
        wire.fed += len(chunk)
        events = deque(conn.feed(chunk))
        attach_later: list[int] = []
        while wire.packets and wire.packets[0].start < wire.fed:
            packet = wire.packets[0]
            if packet.msg is not None:
                if packet.end > wire.fed:
                    break
                self.arrive(receiver, sender, packet, events, attach_later)
            else:
                payload_at = packet.start + DATA_HEADER_SIZE
                if not packet.header_done:
                    if payload_at > wire.fed:
                        break
                    packet.header_done = True
                    packet.skipped = self.arrive_data(receiver, sender, packet)
                lo, hi = max(old, payload_at), min(wire.fed, packet.end)
                if hi > lo and not packet.skipped:
                    self.arrive_payload(receiver, packet, lo - payload_at, hi - payload_at, events)
                if packet.end > wire.fed:
                    break
            wire.packets.popleft()
        assert not events, f"events the wire does not explain: {list(events)}"
        for fid in attach_later:
            session = self.view[receiver].get(fid)
            if session is not None and session.phase is Phase.DOWNLOADING:
                left = session.size - len(self.expected[receiver][fid])
                if left:
                    self.attach(receiver, fid, left)

    def arrive(self, receiver: Role, sender: Role, packet: Packet, events, attach_later) -> None:
        msg = packet.msg
        assert msg is not None
        outcome = judge(self.view[receiver], self.ended[receiver], msg, sender, local=False)
        assert not isinstance(outcome, ErrorCode), f"{msg} sent legally, refused on arrival"
        if outcome == DROP:
            event("stale packet dropped after a crossing Error")
            return
        assert events, f"{msg} arrived but made no event"
        assert events.popleft() == msg
        commit(self.view[receiver], self.ended[receiver], msg, sender, local=False)
        fid = msg.file_id  # type: ignore[union-attr]
        match msg:
            case m.Error() | m.FileSyncCancel():
                self.attached[receiver].discard(fid)
            case m.FileSyncInit():
                self.fresh(receiver, fid)
                self.source[receiver][fid] = packet.info["out"]
            case m.FileSyncCheckHash(digest=digest):
                self.attached[receiver].discard(fid)
                assert self.received(receiver, fid) == packet.info["bytes"], "payload corrupted"
                self.claims[receiver][fid] = (digest, packet.info["honest"])
            case m.FileSyncRetryUpload():
                self.outgoing[receiver][fid].sent = 0
            case m.DownloadResponse(status=m.LookupStatus.OK, entry=entry):
                assert entry is not None
                self.fresh(receiver, fid)
                self.source[receiver][fid] = packet.info["out"]
                self.entry_digests[fid] = entry.digest
                if packet.info["sink"]:
                    attach_later.append(fid)

    def arrive_data(self, receiver: Role, sender: Role, packet: Packet) -> bool:
        """A data header reached *receiver*: count it; True if its payload is to be skipped."""
        assert packet.fid is not None
        nbytes = len(packet.payload)
        view = self.view[receiver]
        outcome = judge_data(view, self.ended[receiver], packet.fid, nbytes, sender, False)
        assert not isinstance(outcome, ErrorCode), "data sent legally, refused on arrival"
        if outcome == DROP:
            event("stale payload skipped after a crossing Error")
            return True
        view[packet.fid].transferred += nbytes
        return False

    def arrive_payload(self, receiver: Role, packet: Packet, lo: int, hi: int, events) -> None:
        fid = packet.fid
        assert fid is not None
        part = packet.payload[lo:hi]
        self.expected[receiver][fid] += part
        # This payload's bytes are the next DataChunk events of *fid*, or went to its sink. A
        # chunk of another file next in line belongs to a later packet (the sink took these).
        evented = bytearray()
        while len(evented) < len(part) and events and isinstance(events[0], DataChunk):
            if events[0].file_id != fid:
                break
            evented += events.popleft().data
        if evented:  # not into the sink: as events, all of it
            assert evented == part
            self.got[receiver][fid] += evented
        else:
            assert fid in self.attached[receiver], "payload neither evented nor given a sink"

    @rule(amount=amounts, data=st.data())
    def deliver_some(self, amount: int, data: st.DataObject) -> None:
        """Part of what is in flight, in one direction: packets arrive in fragments."""
        senders = [r for r in (C, S) if self.wires[r].buf]
        if senders:
            self.deliver(data.draw(st.sampled_from(senders)), amount)

    @rule()
    def deliver_everything(self) -> None:
        for sender in (C, S):
            self.deliver(sender, 1 << 30)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def each_side_is_its_model(self) -> None:
        """Each connection's sessions, crossing-Error ids and sinks are what its model says,
        within the in-flight limit, and no byte count ever passes its session's size."""
        for role in (C, S):
            conn = self.conns[role]
            assert conn.phase is ConnPhase.READY
            real = {f: (s.phase, s.size, s.transferred) for f, s in conn.sessions.sessions.items()}
            model = {f: (s.phase, s.size, s.transferred) for f, s in self.view[role].items()}
            assert real == model
            assert len(conn.sessions) <= LIMIT
            assert all(s.transferred <= s.size for s in conn.sessions.sessions.values())
            assert list(conn._ended) == list(self.ended[role])
            assert set(conn._sinks) == self.attached[role]
            assert not conn.requests.pending

    @invariant()
    def receivers_got_exactly_what_was_sent(self) -> None:
        """Payload reached the receiver byte for byte, through events or its sink, in order."""
        for receiver, sender in ((S, C), (C, S)):
            for fid, session in self.view[receiver].items():
                if session.phase is not DATA_PHASE[sender]:
                    continue
                got = self.received(receiver, fid)
                assert got == self.expected[receiver][fid]
                assert len(got) <= session.transferred <= session.size
                # the attempt this session reads, not whatever the sender has under that id now
                # (it may have cancelled and reopened it while this session's end is in flight)
                out = self.source[receiver][fid]
                assert len(got) <= out.sent
                assert out.content[: len(got)] == got

    @invariant()
    def both_ends_agree_but_for_what_is_in_flight(self) -> None:
        """A session with no packet in flight either way is in the same phase at both ends.
        Delivering everything in flight (to copies) makes both ends agree on every session,
        and then every id without a session is free to be reused."""
        for fid in set(self.view[C]) | set(self.view[S]):
            if not any(p.fid == fid for r in (C, S) for p in self.wires[r].packets):
                client, server = self.view[C].get(fid), self.view[S].get(fid)
                assert (client and client.phase) == (server and server.phase), fid
        client, server = clone_of(self.conns[C]), clone_of(self.conns[S])
        server.feed(bytes(self.wires[C].buf))
        client.feed(bytes(self.wires[S].buf))
        assert client.sessions.sessions == server.sessions.sessions
        for fid in sorted(self.known - set(client.sessions.sessions) - set(client._ended)):
            if len(client.sessions) >= LIMIT:
                break
            msg = m.DownloadRequest(fid, 0, None, "again")
            assert server.feed(client.send(msg)) == [msg]
            assert server.sessions.phase(fid) is Phase.AWAIT_DOWNLOAD_RESPONSE


SessionMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=100,
    deadline=None,
    phases=[Phase_.explicit, Phase_.reuse, Phase_.generate, Phase_.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_upload_and_download_state_machines = SessionMachine.TestCase
