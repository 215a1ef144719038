"""What a side may not send, as one table: in a given state, ``send`` refuses the packet with a
LocalProtocolError and changes nothing, and a peer that gets its bytes anyway fails with the
right error code and stays failed. Bytes in, errors out, no sockets (see ``test_connection``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from common import messages as m
from common.codec import encode
from common.connection import CLIENT_SENDS, SERVER_SENDS, ConnPhase, FSConnection
from common.errors import ErrorCode, LocalProtocolError
from common.limits import DATA_HEADER_SIZE, DEFAULT_MAX_PACKET, MAGIC, NO_FILE, PROTOCOL_VERSION
from common.state import Phase, Role
from tests.test_codec_properties import minimal_message
from tests.test_connection import (
    DIGEST,
    ENTRY,
    REQUESTS,
    ConnectionPair,
    assert_broken,
    state_of,
    tr_error,
)

T = m.PacketType
E = ErrorCode
CLIENT, SERVER = Role.CLIENT, Role.SERVER
HELLO = m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 65536, "c", "s", b"")
REPLY = m.VersionHandshakeResponse(m.HandshakeStatus.OK, 1, 65536, 0, DIGEST, 4096, "")
NOTE = m.ChangeNotification(False, ENTRY)
Setup = Callable[[], ConnectionPair]
Step = Callable[[ConnectionPair], object]


@dataclass(frozen=True)
class Refusal:
    """In the state *setup* leaves, *sender* may not send *msg*. Its peer, given the bytes
    anyway, fails with *code* (at byte *at* when fed one at a time, if given; with *word* in
    its message, if given). The sender's own refusal carries *local* (default: *code*)."""

    id: str
    setup: Setup
    sender: Role
    msg: m.Message
    code: ErrorCode
    local: ErrorCode | None = None
    at: int | None = None
    word: str | None = None


def after(*steps: Step, start: Setup | None = None) -> Setup:
    """A pair past the handshake (or as *start* makes it) that has taken *steps*."""

    def setup() -> ConnectionPair:
        pair = start() if start else ConnectionPair().ready()
        for step in steps:
            step(pair)
        return pair

    return setup


def hello(proposal: int) -> m.VersionHandshake:
    return m.VersionHandshake(MAGIC, PROTOCOL_VERSION, proposal, "c", "s", b"")


def data(fid: int, payload: bytes) -> m.FileSyncData:
    return m.FileSyncData(fid, payload)


def init(fid: int, size: int, path: str = "a") -> m.FileSyncInit:
    return m.FileSyncInit(fid, size, 0, 0, 0, None, path)


def sessions_ended(pair: ConnectionPair) -> None:
    assert len(pair.client.sessions) == len(pair.server.sessions) == 0


def both_closed(pair: ConnectionPair) -> None:
    assert pair.client.phase is pair.server.phase is ConnPhase.CLOSED


def both_await_finish(fid: int) -> Step:
    def check(pair: ConnectionPair) -> None:
        assert pair.client.sessions.phase(fid) is pair.server.sessions.phase(fid)
        assert pair.client.sessions.phase(fid) is Phase.AWAIT_FINISH

    return check


FRESH: Setup = ConnectionPair
"""Nothing sent yet: both ends wait for the handshake."""
HELLO_SENT = after(lambda p: p.c2s(HELLO), start=FRESH)
TWO_IN_FLIGHT = after(start=lambda: ConnectionPair(max_in_flight=2).ready())
ALREADY_HAVE = after(
    lambda p: p.c2s(m.FileSyncInit(2, 1000, 0, 0, 0, DIGEST, "dup")),
    lambda p: p.s2c(m.FileSyncInitResponse(2, m.InitStatus.ALREADY_HAVE_CONTENT, 3, 0, "")),
    both_await_finish(2),
)
HASH_SENT = after(
    lambda p: p.upload_accepted(1, 0), lambda p: p.c2s(m.FileSyncCheckHash(1, DIGEST))
)
CANCELLED = after(lambda p: p.upload_accepted(1, 100), lambda p: p.c2s(m.FileSyncCancel(1)))
SUBSCRIBING = after(lambda p: p.c2s(m.SubscribeRequest(4, 0)))
REFUSED_INIT_STATUSES = [
    s for s in m.InitStatus if s not in (m.InitStatus.ACCEPTED, m.InitStatus.ALREADY_HAVE_CONTENT)
]


# fmt: off
def handshake_rows() -> list[Refusal]:
    ping = m.Ping(1, False)
    rows = [
        Refusal(f"proposing-{p}-bytes-below-4096", FRESH, CLIENT, hello(p), E.MALFORMED)
        for p in (0, 1, DEFAULT_MAX_PACKET - 1)
    ]
    rows += [
        Refusal("a-second-handshake", after(), CLIENT, HELLO, E.UNEXPECTED_PACKET),
        Refusal("a-second-handshake-response", after(), SERVER, REPLY, E.UNEXPECTED_PACKET),
        Refusal("a-handshake-from-the-server", FRESH, SERVER, HELLO, E.UNEXPECTED_PACKET),
        Refusal("a-handshake-response-from-the-client", FRESH, CLIENT, REPLY,
                E.UNEXPECTED_PACKET),
        Refusal("a-handshake-response-before-the-handshake", FRESH, SERVER, REPLY,
                E.UNEXPECTED_PACKET),
        Refusal("ping-before-the-handshake-response", HELLO_SENT, CLIENT, ping,
                E.UNEXPECTED_PACKET),
        Refusal("ping-from-the-server-before-its-handshake-response", HELLO_SENT, SERVER, ping,
                E.UNEXPECTED_PACKET),
        Refusal("data-before-the-handshake", FRESH, CLIENT, data(1, b"abc"), E.UNEXPECTED_PACKET,
                at=8),
    ]
    rows += [
        Refusal(f"{type(msg).__name__}-before-the-handshake", FRESH, CLIENT, msg,
                E.UNEXPECTED_PACKET)
        for msg in (ping, m.StatRequest(1, "a"), m.ListRequest(1, 10, "", ""), init(1, 3),
                    m.DownloadRequest(1, 0, None, "a"))
    ]
    for status in m.HandshakeStatus:
        if status is not m.HandshakeStatus.OK:
            refused = after(lambda p, s=status: p.handshake(65536, status=s), both_closed,
                            start=FRESH)
            rows += [
                Refusal(f"ping-from-the-{role.name.lower()}-after-a-refused-handshake-"
                        f"{status.name}", refused, role, ping, E.UNEXPECTED_PACKET)
                for role in Role
            ]
    return rows


def packet_type_rows() -> list[Refusal]:
    """Every type a role may not send at all, minimal otherwise."""
    return [
        Refusal(f"{ptype.name}-from-the-{sender.name.lower()}", after(), sender,
                minimal_message(m.PACKET_CLASSES[ptype]), E.UNEXPECTED_PACKET)
        for sender, allowed in ((CLIENT, CLIENT_SENDS), (SERVER, SERVER_SENDS))
        for ptype in T
        if ptype not in allowed
    ]


def upload_rows() -> list[Refusal]:
    accepted = after(lambda p: p.upload_accepted(1, 10))
    at_8192 = after(lambda p: p.upload_accepted(1, 10_000),
                    start=lambda: ConnectionPair().ready(8192))
    init_sent = after(lambda p: p.c2s(init(1, 10)))
    rows = [
        Refusal("data-over-the-agreed-packet-size", at_8192, CLIENT,
                data(1, bytes(8192 - DATA_HEADER_SIZE + 1)), E.PACKET_TOO_LARGE, at=4),
        Refusal("data-for-an-unknown-file", after(), CLIENT, data(9, b"abc"), E.UNKNOWN_FILE,
                at=8),
        Refusal("data-before-the-init-response", init_sent, CLIENT, data(1, b"abc"),
                E.UNEXPECTED_PACKET, at=8),
        Refusal("more-data-than-declared",
                after(lambda p: p.stream(p.client, 1, b"012345"), start=accepted),
                CLIENT, data(1, b"67890"), E.LIMIT_EXCEEDED, at=8),
        Refusal("check-hash-before-every-byte",
                after(lambda p: p.stream(p.client, 1, b"012345678"), start=accepted),
                CLIENT, m.FileSyncCheckHash(1, DIGEST), E.UNEXPECTED_PACKET),
        Refusal("retry-without-a-mismatch", after(lambda p: p.upload_accepted(1, 0)), SERVER,
                m.FileSyncRetryUpload(1, 1), E.UNEXPECTED_PACKET),
        Refusal("data-after-already-have-content", ALREADY_HAVE, CLIENT, data(2, b"x"),
                E.UNEXPECTED_PACKET),
        Refusal("check-hash-after-already-have-content", ALREADY_HAVE, CLIENT,
                m.FileSyncCheckHash(2, DIGEST), E.UNEXPECTED_PACKET),
        Refusal("data-after-already-have-content-finished",
                after(lambda p: p.s2c(m.FileSyncFinish(2, 3)), start=ALREADY_HAVE), CLIENT,
                data(2, b"x"), E.UNKNOWN_FILE),
        Refusal("an-init-with-a-file-id-in-use", accepted, CLIENT, init(1, 10, "b"),
                E.UNEXPECTED_PACKET),
        Refusal("a-download-with-a-file-id-in-use", accepted, CLIENT,
                m.DownloadRequest(1, 0, None, "b"), E.UNEXPECTED_PACKET),
        Refusal("an-init-response-for-an-unknown-file", after(), SERVER,
                m.FileSyncInitResponse(8, m.InitStatus.ACCEPTED, 0, 0, ""), E.UNKNOWN_FILE),
        Refusal("an-accept-from-past-the-end", init_sent, SERVER,
                m.FileSyncInitResponse(1, m.InitStatus.ACCEPTED, 0, 11, ""), E.MALFORMED),
        Refusal("a-refusal-with-an-offset", init_sent, SERVER,
                m.FileSyncInitResponse(1, m.InitStatus.NO_SPACE, 0, 1, "no"), E.MALFORMED),
        Refusal("data-after-a-cancel", CANCELLED, CLIENT, data(1, b"d"), E.UNKNOWN_FILE),
        Refusal("a-cancel-after-a-cancel", CANCELLED, CLIENT, m.FileSyncCancel(1),
                E.UNKNOWN_FILE),
        Refusal("a-cancel-before-the-init-response", after(lambda p: p.c2s(init(1, 0))), CLIENT,
                m.FileSyncCancel(1), E.UNEXPECTED_PACKET),
        Refusal("a-cancel-while-the-hash-is-checked", HASH_SENT, CLIENT, m.FileSyncCancel(1),
                E.UNEXPECTED_PACKET),
        Refusal("a-verdict-from-the-uploader", HASH_SENT, CLIENT,
                m.FileSyncCheckHashResponse(1, m.HashStatus.OK, DIGEST), E.UNEXPECTED_PACKET),
    ]
    rows += [
        Refusal(f"data-after-a-refused-init-{status.name}",
                after(lambda p, s=status: p.s2c(m.FileSyncInitResponse(1, s, 0, 0, "no")),
                      sessions_ended, start=init_sent),
                CLIENT, data(1, b"x"), E.UNKNOWN_FILE)
        for status in REFUSED_INIT_STATUSES
    ]
    rows += [
        Refusal(f"{type(msg).__name__}-with-the-reserved-file-id", after(), CLIENT, msg,
                E.MALFORMED)
        for msg in (m.FileSyncInit(NO_FILE, 0, 0, 0, 0, None, "a"),
                    m.DownloadRequest(NO_FILE, 0, None, "a"))
    ]
    return rows


def limit_rows() -> list[Refusal]:
    """max_in_flight=2: sessions and requests have a limit each, of that size."""
    sessions = (lambda p: p.c2s(init(1, 1, "a")),
                lambda p: p.c2s(m.DownloadRequest(2, 0, None, "b")))
    two_sessions = after(*sessions, lambda p: p.c2s(m.StatRequest(3, "requests do not count")),
                         start=TWO_IN_FLIGHT)
    two_requests = after(*sessions, lambda p: p.c2s(m.StatRequest(1, "b")),
                         lambda p: p.c2s(m.ListRequest(2, 1, "", "")), start=TWO_IN_FLIGHT)
    return [
        Refusal("a-download-over-the-session-limit", two_sessions, CLIENT,
                m.DownloadRequest(3, 0, None, "c"), E.LIMIT_EXCEEDED, word="2"),
        Refusal("an-init-over-the-session-limit", two_sessions, CLIENT, init(3, 1, "c"),
                E.LIMIT_EXCEEDED, word="2"),
        Refusal("a-request-over-the-request-limit", two_requests, CLIENT,
                m.DeleteRequest(3, 0, "c"), E.LIMIT_EXCEEDED),
    ]


def download_rows() -> list[Refusal]:
    entry = m.FileEntry(1, 1, 0, 0, DIGEST, "x")
    requested = after(lambda p: p.c2s(m.DownloadRequest(3, 0, None, "x")))
    rows = [
        Refusal("check-hash-before-every-byte-of-a-download",
                after(lambda p: p.download_started(3, 10), lambda p: p.stream(p.server, 3, b"abc")),
                SERVER, m.FileSyncCheckHash(3, DIGEST), E.UNEXPECTED_PACKET),
        Refusal("download-data-beyond-the-entry-size", after(lambda p: p.download_started(3, 2)),
                SERVER, data(3, b"abc"), E.LIMIT_EXCEEDED, at=8),
        Refusal("a-download-ok-without-an-entry", requested, SERVER,
                m.DownloadResponse(3, m.LookupStatus.OK, 0, "", None), E.MALFORMED),
        Refusal("a-download-response-for-an-unknown-file", after(), SERVER,
                m.DownloadResponse(3, m.LookupStatus.OK, 0, "", entry), E.UNKNOWN_FILE),
        Refusal("a-download-from-an-offset-not-asked", requested, SERVER,
                m.DownloadResponse(3, m.LookupStatus.OK, 1, "", entry), E.MALFORMED),
        Refusal("a-download-from-another-offset-than-asked",
                after(lambda p: p.c2s(m.DownloadRequest(3, 2, DIGEST, "x"))), SERVER,
                m.DownloadResponse(3, m.LookupStatus.OK, 1, "", m.FileEntry(5, 1, 0, 0, DIGEST,
                                                                           "x")), E.MALFORMED),
        Refusal("a-download-from-past-its-end",
                after(lambda p: p.c2s(m.DownloadRequest(3, 2, DIGEST, "x"))), SERVER,
                m.DownloadResponse(3, m.LookupStatus.OK, 2, "", entry), E.MALFORMED),
        Refusal("a-download-refusal-with-an-offset",
                after(lambda p: p.c2s(m.DownloadRequest(3, 2, DIGEST, "x"))), SERVER,
                m.DownloadResponse(3, m.LookupStatus.NOT_FOUND, 2, "", None), E.MALFORMED),
    ]
    rows += [
        Refusal(f"download-data-after-a-refusal-{status.name}",
                after(lambda p, s=status: p.s2c(m.DownloadResponse(3, s, 0, "nope", None)),
                      sessions_ended, start=requested),
                SERVER, data(3, b"x"), E.UNKNOWN_FILE)
        for status in m.LookupStatus
        if status is not m.LookupStatus.OK
    ]
    return rows


def connection_error_rows() -> list[Refusal]:
    def closed_by(role: Role) -> Setup:
        bye = m.Error(E.SHUTTING_DOWN, NO_FILE, "bye")
        return after(lambda p: p.upload_accepted(1, 10),
                     lambda p: p.deliver(p.client if role is CLIENT else p.server, bye),
                     both_closed)

    return [
        Refusal(f"data-after-a-connection-error-from-the-{role.name.lower()}", closed_by(role),
                CLIENT, data(1, b"x"), E.UNEXPECTED_PACKET)
        for role in Role
    ]


def request_rows() -> list[Refusal]:
    rows = []
    for req, response in REQUESTS:
        name = f"{type(req).__name__}-{response.status.name}"
        answer = f"{type(response).__name__}-{response.status.name}"
        asked = after(lambda p, r=req: p.c2s(r))
        answered = after(lambda p, r=response: p.s2c(r), start=asked)
        rows += [
            Refusal(f"a-second-{name}-with-the-same-id", asked, CLIENT, req, E.UNEXPECTED_PACKET),
            Refusal(f"a-stat-with-the-id-of-a-pending-{name}", asked, CLIENT,
                    m.StatRequest(7, "other"), E.UNEXPECTED_PACKET),
            Refusal(f"a-{answer}-to-no-request", after(), SERVER, response, E.UNEXPECTED_PACKET),
            Refusal(f"a-{answer}-twice", answered, SERVER, response, E.UNEXPECTED_PACKET),
        ]
    rows.append(Refusal("a-response-of-the-wrong-kind",
                        after(lambda p: p.c2s(m.ListRequest(7, 1, "", ""))), SERVER,
                        m.StatResponse(7, m.LookupStatus.OK, "", ENTRY), E.UNEXPECTED_PACKET))
    return rows


def subscription_rows() -> list[Refusal]:
    subscribed = after(lambda p: p.s2c(m.SubscribeResponse(4, m.LookupStatus.OK, 12, "")),
                       start=SUBSCRIBING)
    refused = after(lambda p: p.s2c(m.SubscribeResponse(4, m.LookupStatus.NOT_FOUND, 0, "no")),
                    start=SUBSCRIBING)
    return [
        Refusal("a-notification-without-a-subscription", after(), SERVER, NOTE,
                E.UNEXPECTED_PACKET),
        Refusal("a-notification-before-the-subscription-is-answered", SUBSCRIBING, SERVER, NOTE,
                E.UNEXPECTED_PACKET),
        Refusal("a-notification-after-a-refused-subscription", refused, SERVER, NOTE,
                E.UNEXPECTED_PACKET),
        Refusal("a-second-subscription", subscribed, CLIENT, m.SubscribeRequest(5, 0),
                E.UNEXPECTED_PACKET),
        Refusal("a-second-subscription-while-one-is-pending", SUBSCRIBING, CLIENT,
                m.SubscribeRequest(5, 0), E.UNEXPECTED_PACKET),
    ]
# fmt: on


REFUSALS = [
    *handshake_rows(),
    *packet_type_rows(),
    *upload_rows(),
    *limit_rows(),
    *download_rows(),
    *connection_error_rows(),
    *request_rows(),
    *subscription_rows(),
]


def attempts(sender: FSConnection, msg: m.Message) -> list[Callable[[], object]]:
    """Every way this side could send *msg*: data also by its header alone, and framed."""
    ways: list[Callable[[], object]] = [lambda: sender.send(msg)]
    if isinstance(msg, m.FileSyncData):
        ways.append(lambda: sender.data_header(msg.file_id, len(msg.payload)))
        if len(msg.payload) <= sender.max_payload:  # framed as one packet
            ways.append(lambda: sender.frame_data(msg.file_id, memoryview(msg.payload)))
    return ways


def test_the_table_has_one_row_per_case():
    ids = [case.id for case in REFUSALS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", REFUSALS, ids=lambda case: case.id)
def test_a_packet_this_side_may_not_send_fails_its_peer(case: Refusal):
    pair = case.setup()
    sender = pair.client if case.sender is CLIENT else pair.server
    before = copy.deepcopy(state_of(sender))
    for attempt in attempts(sender, case.msg):
        with pytest.raises(LocalProtocolError) as refused:
            attempt()
        assert refused.value.code is (case.local or case.code), refused.value
        assert state_of(sender) == before, "a refused send changes nothing"
    error = tr_error(pair.peer_of(sender), encode(case.msg), case.code, at=case.at)
    if case.word is not None:
        assert case.word in error.message
    assert_broken(pair.peer_of(sender))
