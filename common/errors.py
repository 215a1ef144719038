"""Typed errors and the wire codes they map to.

As in h11, errors are split by whose fault they are: ``LocalProtocolError`` means this side
misused the API, ``RemoteProtocolError`` means the peer sent something bad. The inbound entry
point of a connection lets nothing but ``RemoteProtocolError`` escape.
"""

from enum import IntEnum


class ErrorCode(IntEnum):
    """The u16 code of an Error packet."""

    INTERNAL = 1
    MALFORMED = 2
    PACKET_TOO_LARGE = 3
    UNEXPECTED_PACKET = 4
    UNKNOWN_TYPE = 5
    INVALID_PATH = 6
    NO_SPACE = 7
    UNSUPPORTED_VERSION = 8
    AUTH_FAILED = 9
    UNKNOWN_FILE = 10
    LIMIT_EXCEEDED = 11
    SHUTTING_DOWN = 12
    NOT_FOUND = 13
    CONFLICT = 14
    INVALID_SHARE = 15
    HASH_MISMATCH = 16
    TIMEOUT = 17
    PERMISSION_DENIED = 18
    NO_SUCH_SHARE = 19


class FSError(Exception):
    """Base of every error FS raises on purpose; carries the wire code it maps to."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ProtocolError(FSError):
    """A packet that breaks the protocol: malformed, out of order, over a limit."""

    code = ErrorCode.MALFORMED


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class InvalidPath(FSError):
    code = ErrorCode.INVALID_PATH


class InvalidName(FSError):
    code = ErrorCode.INVALID_SHARE


class NoSuchShare(FSError):
    """The share the handshake named does not exist, and the client did not ask to make it."""

    code = ErrorCode.NO_SUCH_SHARE


class StoreFull(FSError):
    code = ErrorCode.NO_SPACE


class NotFound(FSError):
    code = ErrorCode.NOT_FOUND


class Conflict(FSError):
    code = ErrorCode.CONFLICT


class HistoryExpired(FSError):
    """The server no longer keeps the deletes since the version asked for: rescan in full."""

    code = ErrorCode.CONFLICT


class AuthError(FSError):
    code = ErrorCode.AUTH_FAILED


class PermissionDenied(FSError):
    """The token may not do that (a read-only token writing, for one)."""

    code = ErrorCode.PERMISSION_DENIED


class HashMismatch(FSError):
    code = ErrorCode.HASH_MISMATCH


class RemoteError(FSError):
    """The peer reported an error (an Error packet or a refusing status)."""
