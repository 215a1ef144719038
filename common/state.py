"""Per-file session state machines, shared by both ends of a connection.

Theory of operation
-------------------
Every upload and every download is a *session* named by a file id that the client picks. Both
peers run the same table below: the side that sends a packet applies the transition before the
bytes leave (a violation is a ``LocalProtocolError``: a bug on this side), and the side that
receives it applies the same transition (a violation is the peer's fault, and the connection
turns it into a ``RemoteProtocolError``). So both sides always agree on every session's phase.

Rules the table keeps:

- A transition is keyed by ``(phase, step, sender)``. A key the table does not list is an error.
  (The enums are IntEnums: hashing a plain Enum runs Python code, and this table is looked up
  for every packet.)
- Response packets become steps by their status (``FileSyncInitResponse(ACCEPTED)`` is
  ``Step.ACCEPTED``), so refusals and successes read as separate rows.
- Data is counted: a session never carries more bytes than the size announced for it, and
  CheckHash is allowed only once every byte has arrived. Lengths are checked from the packet
  header, before a byte of payload is accepted.
- A session that reaches ``DONE`` is forgotten and its file id may be reused.
- An ``Error`` packet that names a file id ends that session from any phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, auto
from typing import Any

from common.errors import ErrorCode, LocalProtocolError
from common.limits import MAX_IN_FLIGHT, NO_FILE


class Role(IntEnum):
    CLIENT = auto()
    SERVER = auto()


class Phase(IntEnum):
    AWAIT_INIT_RESPONSE = auto()
    UPLOADING = auto()
    AWAIT_HASH_RESULT = auto()
    AWAIT_RETRY = auto()
    AWAIT_FINISH = auto()
    AWAIT_DOWNLOAD_RESPONSE = auto()
    DOWNLOADING = auto()
    AWAIT_VERDICT = auto()
    DONE = auto()


class Step(IntEnum):
    INIT = auto()
    ACCEPTED = auto()
    ALREADY_HAVE = auto()
    REFUSED = auto()
    DATA = auto()
    CHECK_HASH = auto()
    HASH_OK = auto()
    HASH_MISMATCH = auto()
    RETRY = auto()
    FINISH = auto()
    CANCEL = auto()
    DOWNLOAD_REQUEST = auto()
    DOWNLOAD_OK = auto()


C, S = Role.CLIENT, Role.SERVER
P = Phase

TRANSITIONS: dict[tuple[Phase | None, Step, Role], Phase] = {
    # upload: Init -> InitResponse -> Data... -> CheckHash -> CheckHashResponse -> Finish
    (None, Step.INIT, C): P.AWAIT_INIT_RESPONSE,
    (P.AWAIT_INIT_RESPONSE, Step.ACCEPTED, S): P.UPLOADING,
    (P.AWAIT_INIT_RESPONSE, Step.ALREADY_HAVE, S): P.AWAIT_FINISH,
    (P.AWAIT_INIT_RESPONSE, Step.REFUSED, S): P.DONE,
    (P.UPLOADING, Step.DATA, C): P.UPLOADING,
    (P.UPLOADING, Step.CHECK_HASH, C): P.AWAIT_HASH_RESULT,
    (P.UPLOADING, Step.CANCEL, C): P.DONE,
    (P.AWAIT_HASH_RESULT, Step.HASH_OK, S): P.AWAIT_FINISH,
    (P.AWAIT_HASH_RESULT, Step.HASH_MISMATCH, S): P.AWAIT_RETRY,
    (P.AWAIT_RETRY, Step.RETRY, S): P.UPLOADING,
    (P.AWAIT_FINISH, Step.FINISH, S): P.DONE,
    # download, the mirror: DownloadRequest -> DownloadResponse -> Data... -> CheckHash
    # -> CheckHashResponse (from the client, which verified the bytes)
    (None, Step.DOWNLOAD_REQUEST, C): P.AWAIT_DOWNLOAD_RESPONSE,
    (P.AWAIT_DOWNLOAD_RESPONSE, Step.DOWNLOAD_OK, S): P.DOWNLOADING,
    (P.AWAIT_DOWNLOAD_RESPONSE, Step.REFUSED, S): P.DONE,
    (P.DOWNLOADING, Step.DATA, S): P.DOWNLOADING,
    (P.DOWNLOADING, Step.CHECK_HASH, S): P.AWAIT_VERDICT,
    (P.AWAIT_VERDICT, Step.HASH_OK, C): P.DONE,
    (P.AWAIT_VERDICT, Step.HASH_MISMATCH, C): P.DONE,
}


@dataclass(slots=True)
class Session:
    phase: Phase
    size: int = 0
    transferred: int = 0
    asked: int = 0
    """A download's requested offset: the response starts there or at 0."""
    zstd: bool = False
    """The payload is a zstd stream: ``transferred`` counts the original bytes, ``wire`` the
    compressed ones."""
    zstd_asked: bool = False
    """A download whose payload may come compressed."""
    wire: int = 0
    coder: Any = None
    """The session's ``Deflater`` or ``Inflater`` (``common.compression``), made when its
    first payload is sent or arrives, and again for a retry."""


class SessionTable:
    """The phase of every open session on one connection, driven by ``TRANSITIONS``."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.sessions: dict[int, Session] = {}
        self.max_in_flight = max_in_flight

    def __len__(self) -> int:
        return len(self.sessions)

    def phase(self, file_id: int) -> Phase | None:
        session = self.sessions.get(file_id)
        return session.phase if session else None

    def apply(self, file_id: int, step: Step, sender: Role, size: int | None = None,
              offset: int = 0) -> Phase:  # fmt: skip
        """Move *file_id* through *step*; ``size`` is given with INIT and DOWNLOAD_OK, an
        ``offset`` with DOWNLOAD_REQUEST (asked), ACCEPTED and DOWNLOAD_OK (where the
        payload starts: the bytes before it count as transferred)."""
        session = self.sessions.get(file_id)
        current = session.phase if session else None
        nxt = TRANSITIONS.get((current, step, sender))
        if nxt is None:
            where = current.name if current else "no session"
            raise LocalProtocolError(
                f"{step.name} from {sender.name.lower()} not allowed for file {file_id} ({where})",
                ErrorCode.UNEXPECTED_PACKET if current else ErrorCode.UNKNOWN_FILE,
            )
        if session is None:
            if file_id == NO_FILE:
                raise LocalProtocolError(
                    f"file id {NO_FILE:#x} is reserved for connection-level errors"
                )
            if len(self.sessions) >= self.max_in_flight:
                raise LocalProtocolError(
                    f"more than {self.max_in_flight} sessions in flight", ErrorCode.LIMIT_EXCEEDED
                )
            session = self.sessions[file_id] = Session(nxt, size or 0)
        elif step is Step.CHECK_HASH and session.transferred != session.size:
            raise LocalProtocolError(
                f"CheckHash for file {file_id} after {session.transferred} of {session.size} bytes",
                ErrorCode.UNEXPECTED_PACKET,
            )
        if offset and step is not Step.DOWNLOAD_REQUEST:
            self._check_offset(file_id, session, step, offset, size)
        if size is not None:
            session.size = size
        if step is Step.RETRY:
            session.transferred = session.wire = 0
            session.coder = None
        elif step is Step.CHECK_HASH:
            session.coder = None  # (a decompressor's window is freed once its bytes are in)
        elif step is Step.DOWNLOAD_REQUEST:
            session.asked = offset
        elif offset:
            session.transferred = offset
        if nxt is Phase.DONE:
            del self.sessions[file_id]
        else:
            session.phase = nxt
        return nxt

    @staticmethod
    def _check_offset(file_id: int, session: Session, step: Step, offset: int,
                      size: int | None) -> None:  # fmt: skip
        """A resumed session's payload starts at *offset*: within the file, and for a
        download where it was asked to (section 6.3 of the spec)."""
        size = session.size if size is None else size
        if offset > size or (step is Step.DOWNLOAD_OK and offset != session.asked):
            asked = session.asked if step is Step.DOWNLOAD_OK else "nothing"
            raise LocalProtocolError(
                f"file {file_id}: offset {offset} of {size} bytes (asked {asked})"
            )

    def count_data(self, file_id: int, nbytes: int, sender: Role) -> Session:
        """Account *nbytes* of payload for *file_id*, refusing more than its size. A sender
        counts a compressed session's original bytes here too; its receiver counts them as
        they come out of the decompressor (``count_wire`` for the packets)."""
        return self.add_data(self.open_for_data(file_id, sender), file_id, nbytes)

    @staticmethod
    def add_data(session: Session, file_id: int, nbytes: int) -> Session:
        """``count_data`` for a session ``open_for_data`` returned already."""
        if session.transferred + nbytes > session.size:
            raise LocalProtocolError(
                f"file {file_id}: {session.transferred + nbytes} bytes exceed its size "
                f"{session.size}",
                ErrorCode.LIMIT_EXCEEDED,
            )
        session.transferred += nbytes
        return session

    def open_for_data(self, file_id: int, sender: Role) -> Session:
        """The session *file_id* if *sender* may send its payload now."""
        session = self.sessions.get(file_id)
        wanted = Phase.UPLOADING if sender is Role.CLIENT else Phase.DOWNLOADING
        if session is None or session.phase is not wanted:
            where = session.phase.name if session else "no session"
            raise LocalProtocolError(
                f"FileSyncData from {sender.name.lower()} for file {file_id} ({where})",
                ErrorCode.UNEXPECTED_PACKET if session else ErrorCode.UNKNOWN_FILE,
            )
        return session

    def count_wire(self, session: Session, file_id: int, nbytes: int, limit: int) -> None:
        """Account *nbytes* of a compressed session's packets, refusing more than *limit*."""
        session.wire += nbytes
        if session.wire > limit:
            raise LocalProtocolError(
                f"file {file_id}: {session.wire} compressed bytes exceed the {limit} its size "
                "allows",
                ErrorCode.LIMIT_EXCEEDED,
            )

    def end(self, file_id: int) -> bool:
        """Forget a session ended by an Error packet; False if there was none."""
        return self.sessions.pop(file_id, None) is not None


class RequestTable:
    """Outstanding list/stat/delete requests by request id; each answered exactly once."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.pending: dict[int, type] = {}
        self.max_in_flight = max_in_flight

    def __len__(self) -> int:
        return len(self.pending)

    def open(self, request_id: int, response_type: type) -> None:
        if request_id in self.pending:
            raise LocalProtocolError(
                f"request id {request_id} is already in flight", ErrorCode.UNEXPECTED_PACKET
            )
        if len(self.pending) >= self.max_in_flight:
            raise LocalProtocolError(
                f"more than {self.max_in_flight} requests in flight", ErrorCode.LIMIT_EXCEEDED
            )
        self.pending[request_id] = response_type

    def close(self, request_id: int, response_type: type) -> None:
        if self.pending.get(request_id) is not response_type:
            raise LocalProtocolError(
                f"{response_type.__name__} for request {request_id} that is not pending",
                ErrorCode.UNEXPECTED_PACKET,
            )
        del self.pending[request_id]
