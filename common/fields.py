"""Wire kinds of message fields: how one field becomes bytes and back.

A message is a frozen dataclass whose fields are annotated ``Annotated[type, KIND]``; the codec
reads those annotations once and builds one ``struct.Struct`` for the fixed-size fields, which
always come first, followed by the variable-size ones. Every length is checked before anything
is sliced or allocated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from common.errors import RemoteProtocolError
from common.limits import DIGEST_SIZE

if TYPE_CHECKING:
    from common.codec import RecordCodec

kind = dataclass(frozen=True, eq=False)
"""Kinds are compared by identity (one per field declaration): no ``__eq__`` and ``__hash__``
compiled for each (every command imports this module)."""

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_ZERO_DIGEST = bytes(DIGEST_SIZE)


class FixedKind:
    """A fixed-size field: ``code`` is its struct format; ``put``/``take`` convert values."""

    code: str = ""
    width: int = 1

    def put(self, items: list[Any], value: Any) -> None:
        items.append(value)

    def take(self, items: tuple[Any, ...], index: int) -> Any:
        return items[index]


def check_digest(value: Any) -> None:
    if len(value) != DIGEST_SIZE:
        raise ValueError(f"digest must be {DIGEST_SIZE} bytes")


@kind
class Int(FixedKind):
    """An integer of the struct format ``code``."""

    code: str


@kind
class Digest(FixedKind):
    """The 16 bytes of an XXH3-128 digest."""

    code: str = f"{DIGEST_SIZE}s"

    def put(self, items: list[Any], value: Any) -> None:
        check_digest(value)
        items.append(value)


@kind
class OptionalDigest(FixedKind):
    """A presence byte then 16 digest bytes (zeros when absent)."""

    code: str = f"B{DIGEST_SIZE}s"
    width: int = 2

    def put(self, items: list[Any], value: Any) -> None:
        if value is None:
            items += (0, _ZERO_DIGEST)
        else:
            check_digest(value)
            items += (1, value)

    def take(self, items: tuple[Any, ...], index: int) -> Any:
        flag = items[index]
        if flag == 0:
            if items[index + 1] != _ZERO_DIGEST:
                raise RemoteProtocolError("absent digest must be zero bytes")
            return None
        if flag != 1:
            raise RemoteProtocolError(f"bad digest presence flag {flag}")
        return items[index + 1]


@kind
class Bool(FixedKind):
    """One byte, 0 or 1."""

    code: str = "B"

    def put(self, items: list[Any], value: Any) -> None:
        items.append(1 if value else 0)

    def take(self, items: tuple[Any, ...], index: int) -> Any:
        flag = items[index]
        if flag > 1:
            raise RemoteProtocolError(f"bad boolean {flag}")
        return flag == 1


@kind
class Enum(FixedKind):
    """A member of an IntEnum, as an unsigned integer (a byte unless ``code`` says more)."""

    enum: type[IntEnum]
    code: str = "B"

    def put(self, items: list[Any], value: Any) -> None:
        items.append(self.enum(value))  # ValueError for a value the enumeration does not list

    @cached_property
    def members(self) -> dict[int, IntEnum]:
        """Value -> member: a dict lookup costs a fraction of calling the enumeration."""
        return {member.value: member for member in self.enum}

    def take(self, items: tuple[Any, ...], index: int) -> Any:
        member = self.members.get(items[index])
        if member is None:
            raise RemoteProtocolError(f"unknown {self.enum.__name__} value {items[index]}")
        return member


@kind
class Magic(FixedKind):
    """Fixed bytes the packet must start with."""

    expected: bytes
    code: str = "4s"

    def put(self, items: list[Any], value: Any) -> None:
        if value != self.expected:
            raise ValueError(f"magic must be {self.expected!r}")
        items.append(value)

    def take(self, items: tuple[Any, ...], index: int) -> Any:
        if items[index] != self.expected:
            raise RemoteProtocolError(f"bad magic {items[index]!r}")
        return items[index]


class VarKind:
    """A variable-size field after the fixed part: length-prefixed or the rest of the body."""

    def encode(self, parts: list[bytes], value: Any) -> None:
        raise TypeError(type(self).__name__)

    def decode(self, body: memoryview, pos: int) -> tuple[Any, int]:
        raise TypeError(type(self).__name__)


def _take_prefixed(
    body: memoryview, pos: int, prefix: struct.Struct, limit: int
) -> tuple[memoryview, int]:
    end = pos + prefix.size
    if end > len(body):
        raise RemoteProtocolError("truncated length prefix")
    (length,) = prefix.unpack_from(body, pos)
    if length > limit:
        raise RemoteProtocolError(f"field of {length} bytes exceeds its limit of {limit}")
    if end + length > len(body):
        raise RemoteProtocolError("field runs past the end of the packet")
    return body[end : end + length], end + length


@kind
class Text(VarKind):
    """UTF-8 text with a u16 byte length; invalid UTF-8 is malformed.

    ``clip`` is for human-readable messages: a long one is cut at a character boundary when
    sent (a path quoted in an error can be longer than a message may be), never refused.
    """

    max_bytes: int
    clip: bool = False

    def encode(self, parts: list[bytes], value: Any) -> None:
        raw = value.encode("utf-8")
        if len(raw) > self.max_bytes and self.clip:
            raw = raw[: self.max_bytes].decode("utf-8", "ignore").encode("utf-8")
        if len(raw) > self.max_bytes:
            raise ValueError(f"text of {len(raw)} bytes exceeds {self.max_bytes}")
        parts += (_U16.pack(len(raw)), raw)

    def decode(self, body: memoryview, pos: int) -> tuple[Any, int]:
        view, pos = _take_prefixed(body, pos, _U16, self.max_bytes)
        try:
            return str(view, "utf-8"), pos
        except UnicodeDecodeError:
            raise RemoteProtocolError("text field is not valid UTF-8") from None


@kind
class Blob(VarKind):
    """Opaque bytes with a u32 length."""

    max_bytes: int

    def encode(self, parts: list[bytes], value: Any) -> None:
        if len(value) > self.max_bytes:
            raise ValueError(f"blob of {len(value)} bytes exceeds {self.max_bytes}")
        parts += (_U32.pack(len(value)), bytes(value))

    def decode(self, body: memoryview, pos: int) -> tuple[Any, int]:
        view, pos = _take_prefixed(body, pos, _U32, self.max_bytes)
        return bytes(view), pos


@kind
class Rest(VarKind):
    """Everything up to the end of the packet, with no prefix (FileSyncData payloads)."""

    def encode(self, parts: list[bytes], value: Any) -> None:
        parts.append(bytes(value))

    def decode(self, body: memoryview, pos: int) -> tuple[Any, int]:
        return bytes(body[pos:]), len(body)


@kind
class TrailingFlags(VarKind):
    """A u8 of flags that ends a packet and may be left out (then it is 0): a field added
    to a packet that peers which predate it send without it. Encoded only when not 0, so a
    packet without flags keeps its old bytes."""

    def encode(self, parts: list[bytes], value: Any) -> None:
        if not 0 <= value <= 0xFF:
            raise ValueError(f"flags {value} do not fit a u8")
        if value:
            parts.append(bytes((value,)))

    def decode(self, body: memoryview, pos: int) -> tuple[Any, int]:
        if pos >= len(body):
            return 0, pos
        if not body[pos]:  # (one encoding per packet: 0 is the byte left out)
            raise RemoteProtocolError("a flags byte of 0 must be left out")
        return body[pos], pos + 1


class _RecordKind(VarKind):
    """A kind holding records of the dataclass ``record``: its codec is looked up on first
    use (``common.codec`` imports this module, so it cannot be imported at import time)."""

    record: type

    @cached_property
    def codec(self) -> RecordCodec:
        from common.codec import record_codec

        return record_codec(self.record)


@kind
class Records(_RecordKind):
    """A u16 count then that many records of one record type (list pages)."""

    record: type
    max_count: int

    def encode(self, parts: list[bytes], value: Any) -> None:
        if len(value) > self.max_count:
            raise ValueError(f"{len(value)} records exceed {self.max_count}")
        parts.append(_U16.pack(len(value)))
        codec = self.codec
        if codec.run is not None:
            codec.run.encode(parts, value)
            return
        for item in value:
            codec.encode_into(parts, item)

    def decode(self, body: memoryview, pos: int) -> tuple[Any, int]:
        if pos + 2 > len(body):
            raise RemoteProtocolError("truncated record count")
        (count,) = _U16.unpack_from(body, pos)
        if count > self.max_count:
            raise RemoteProtocolError(f"{count} records exceed {self.max_count}")
        codec = self.codec
        decode = codec.decode_all if codec.run is None else codec.run.decode
        records, pos = decode(body, pos + 2, count)
        return tuple(records), pos


@kind
class Record(_RecordKind):
    """Exactly one record, inline."""

    record: type

    def encode(self, parts: list[bytes], value: Any) -> None:
        self.codec.encode_into(parts, value)

    def decode(self, body: memoryview, pos: int) -> tuple[Any, int]:
        return self.codec.decode_from(body, pos)


@kind
class OptionalRecord(_RecordKind):
    """A presence byte, then one record if present."""

    record: type

    def encode(self, parts: list[bytes], value: Any) -> None:
        if value is None:
            parts.append(b"\x00")
        else:
            parts.append(b"\x01")
            self.codec.encode_into(parts, value)

    def decode(self, body: memoryview, pos: int) -> tuple[Any, int]:
        if pos >= len(body):
            raise RemoteProtocolError("truncated record flag")
        flag = body[pos]
        if flag == 0:
            return None, pos + 1
        if flag != 1:
            raise RemoteProtocolError(f"bad record presence flag {flag}")
        return self.codec.decode_from(body, pos + 1)


U8 = Int("B")
U16 = Int("H")
U32 = Int("I")
U64 = Int("Q")
I64 = Int("q")
DIGEST = Digest()
BYTES16 = Digest()
"""16 opaque bytes (an id such as the store's): on the wire exactly like a digest."""
OPT_DIGEST = OptionalDigest()
BOOL = Bool()
