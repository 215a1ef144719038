"""Encode messages to packets and decode packet bodies to messages.

Codecs are built once from the dataclass annotations in ``common.messages``: the fixed-size
fields share one precompiled ``struct.Struct``; variable fields follow. Decoding is strict: a
body must be consumed exactly, and every failure is a ``RemoteProtocolError``.
"""

from __future__ import annotations

import dataclasses
import operator
import struct
import typing
from functools import cache
from typing import Any

from common.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from common.fields import Digest, FixedKind, VarKind, check_digest
from common.limits import HEADER_SIZE
from common.messages import PACKET_CLASSES, Message, PacketType
from common.recordruns import RecordRun

HEADER = struct.Struct(">IB")
DATA_HEADER = struct.Struct(">IBI")

# ``put`` methods that append the value as is (Digest's checks its length first)
_PLAIN_PUTS = (FixedKind.put, Digest.put)


class RecordCodec:
    """Encoder/decoder for one dataclass: fixed fields via one Struct, then variable fields."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        hints = typing.get_type_hints(cls, include_extras=True)
        self.fixed: list[tuple[str, FixedKind]] = []
        self.var: list[tuple[str, VarKind]] = []
        for field in dataclasses.fields(cls):
            kind = hints[field.name].__metadata__[0]
            if isinstance(kind, FixedKind):
                if self.var:
                    raise TypeError(f"{cls.__name__}.{field.name}: fixed field after variable")
                self.fixed.append((field.name, kind))
            else:
                self.var.append((field.name, kind))
        self.struct = struct.Struct(">" + "".join(kind.code for _, kind in self.fixed))
        # Fast paths, when every fixed field is one struct item passed as is: on encode the
        # values are fetched at once (digests still have their length checked); on decode the
        # unpacked tuple already holds them.
        one = all(kind.width == 1 for _, kind in self.fixed)
        plain_put = one and all(type(kind).put in _PLAIN_PUTS for _, kind in self.fixed)
        self.get_fixed = (
            operator.attrgetter(*(name for name, _ in self.fixed))
            if plain_put and len(self.fixed) > 1  # (attrgetter of one name is no tuple)
            else None
        )
        self.digests = [
            index for index, (_, kind) in enumerate(self.fixed) if type(kind).put is Digest.put
        ]
        self.plain_take = one and all(type(kind).take is FixedKind.take for _, kind in self.fixed)
        self.run = RecordRun(self) if RecordRun.fits(self.fixed, self.var) else None
        """Many records of this type in one loop (a ``Records`` field), if their shape allows."""

    def encode_into(self, parts: list[bytes], msg: Any) -> None:
        if self.get_fixed is not None:
            items = self.get_fixed(msg)
            for index in self.digests:
                check_digest(items[index])
        else:
            items = []
            for name, kind in self.fixed:
                kind.put(items, getattr(msg, name))
        parts.append(self.struct.pack(*items))
        for name, kind in self.var:
            kind.encode(parts, getattr(msg, name))

    def decode_all(self, body: memoryview, pos: int, count: int, items: list[Any] | None = None
                   ) -> tuple[list[Any], int]:  # fmt: skip
        """*count* records from *pos*, one at a time (added to *items*); where they end."""
        items = [] if items is None else items
        for _ in range(count):
            item, pos = self.decode_from(body, pos)
            items.append(item)
        return items, pos

    def decode_from(self, body: memoryview, pos: int) -> tuple[Any, int]:
        end = pos + self.struct.size
        if end > len(body):
            raise RemoteProtocolError(f"{self.cls.__name__} truncated")
        items = self.struct.unpack_from(body, pos)
        if self.plain_take:
            values = list(items)
        else:
            values = []
            index = 0
            for _, kind in self.fixed:
                values.append(kind.take(items, index))
                index += kind.width
        for _, kind in self.var:
            value, end = kind.decode(body, end)
            values.append(value)
        return self.cls(*values), end


@cache
def record_codec(cls: type) -> RecordCodec:
    return RecordCodec(cls)


_TYPE_OF: dict[type, PacketType] = {cls: ptype for ptype, cls in PACKET_CLASSES.items()}


def packet_type_of(msg: Message) -> PacketType:
    return _TYPE_OF[type(msg)]


def _encode_parts(parts: list[bytes], msg: Message) -> None:
    try:
        record_codec(type(msg)).encode_into(parts, msg)
    except (struct.error, ValueError, TypeError, UnicodeEncodeError, AttributeError) as exc:
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def encode_body(msg: Message) -> bytes:
    parts: list[bytes] = []
    _encode_parts(parts, msg)
    return b"".join(parts)


def encode(msg: Message) -> bytes:
    """The whole packet: header (length, type) then body, joined once (a body is not copied
    again to put the header in front of it)."""
    parts: list[bytes] = [b""]
    _encode_parts(parts, msg)
    parts[0] = HEADER.pack(HEADER_SIZE + sum(map(len, parts)), packet_type_of(msg))
    return b"".join(parts)


def decode_body(ptype: int, body: memoryview) -> Message:
    """Decode one packet body of type *ptype*; raises only RemoteProtocolError."""
    try:
        cls = PACKET_CLASSES[PacketType(ptype)]
    except ValueError:
        raise RemoteProtocolError(f"unknown packet type {ptype}", ErrorCode.UNKNOWN_TYPE) from None
    try:
        msg, end = record_codec(cls).decode_from(body, 0)
    except (struct.error, ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"malformed {cls.__name__}: {exc}") from exc
    if end != len(body):
        raise RemoteProtocolError(f"{len(body) - end} trailing bytes after {cls.__name__}")
    return msg
