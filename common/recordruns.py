"""``RecordRun``: a run of records of one type (a ``Records`` field: a batch's files, its
results, a listing's entries), encoded and decoded in one loop.

The general codec takes a record field by field, a method call or two each: a batch's file
cost 1.2 µs to encode and 1.6 µs to decode, its result 1.0 and 1.1 µs (~5 µs of the ~45 µs of
CPU a 4 KiB file of an initial sync costs in all processes). A record whose fixed fields are
plain struct items (or enumerations) and whose variable fields are all length-prefixed text or
bytes has a simpler shape: one struct call reads its fixed fields together with its first
length prefix, a slice takes each variable field, and the next prefix follows. A run writes
that loop out for its record type once (``exec``, as ``dataclasses`` writes ``__init__``):
0.65 / 1.0 µs for a file, 0.26 / 0.48 µs for a result. Anything out of the ordinary (a
length over its limit, a short body, text that is not UTF-8, an unknown enumeration value, a
value that does not fit) is handed to the general codec from the record where it was met, so
the errors, and the bytes, are exactly the general codec's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from common.fields import Blob, Digest, Enum, FixedKind, Text
from common.limits import DIGEST_SIZE

if TYPE_CHECKING:
    from common.codec import RecordCodec

_PREFIX = {Text: "H", Blob: "I"}


class _Unusual(Exception):
    """A record the run leaves to the general codec."""


class RecordRun:
    def __init__(self, codec: RecordCodec) -> None:
        fixed, var = codec.fixed, codec.var
        self.codec = codec
        self.cls = codec.cls
        self.names = [name for name, _ in fixed]
        codes = "".join(kind.code for _, kind in fixed)
        self.head = struct.Struct(">" + codes + _PREFIX[type(var[0][1])])
        self.fixed_count = len(fixed)
        self.prefixes = [struct.Struct(">" + _PREFIX[type(kind)]) for _, kind in var[1:]]
        self.fields: list[tuple[str, int, bool, struct.Struct | None]] = [
            (name, kind.max_bytes, isinstance(kind, Text),
             self.prefixes[at] if at < len(self.prefixes) else None)
            for at, (name, kind) in enumerate(var)
        ]  # fmt: skip
        self.enums: list[tuple[int, type[IntEnum], dict[int, IntEnum]]] = [
            (index, kind.enum, kind.members)
            for index, (_, kind) in enumerate(fixed)
            if isinstance(kind, Enum)
        ]
        self.digests = [i for i, (_, kind) in enumerate(fixed) if isinstance(kind, Digest)]

    @staticmethod
    def fits(fixed: Sequence[tuple[str, FixedKind]], var: Sequence[tuple[str, Any]]) -> bool:
        """Whether records of these fields have the shape a run handles."""
        plain = all(
            kind.width == 1
            and (type(kind).take is FixedKind.take or isinstance(kind, Enum))
            and (type(kind).put in (FixedKind.put, Digest.put) or isinstance(kind, Enum))
            for _, kind in fixed
        )
        return plain and bool(var) and all(type(kind) in _PREFIX for _, kind in var)

    @cached_property
    def decode(self) -> Callable[[memoryview, int, int], tuple[list[Any], int]]:
        """``decode(body, pos, count)``: the records and where they end; the loop, written
        out for this record type."""
        fixed = [f"f{i}" for i in range(self.fixed_count)]
        lines = [f"{', '.join([*fixed, 'length'])}, = head(body, pos)", f"pos += {self.head.size}"]
        for at, (_name, limit, text, prefix) in enumerate(self.fields):
            take = "str(body[pos:stop], 'utf-8')" if text else "bytes(body[pos:stop])"
            lines += ["stop = pos + length",
                      f"if length > {limit} or stop > size: raise Unusual",
                      f"v{at} = {take}", "pos = stop"]  # fmt: skip
            if prefix is not None:
                lines += [f"(length,) = prefix{at + 1}(body, pos)", f"pos += {prefix.size}"]
        lines += [f"f{i} = members{i}[f{i}]" for i, *_ in self.enums]
        values = fixed + [f"v{at}" for at in range(len(self.fields))]
        lines.append(f"append(cls({', '.join(values)}))")
        body = "\n".join(f"            {line}" for line in lines)
        source = (
            "def decode(body, pos, count):\n"
            "    items = []\n"
            "    append, size, start = items.append, len(body), pos\n"
            "    try:\n"
            "        for _ in range(count):\n"
            "            start = pos\n"
            f"{body}\n"
            "    except (Unusual, struct.error, UnicodeDecodeError, KeyError):\n"
            "        return decode_rest(body, start, count - len(items), items)\n"
            "    return items, pos\n"
        )
        return self._written("decode", source, {
            "head": self.head.unpack_from, "cls": self.cls, "decode_rest": self.codec.decode_all,
            **{f"members{i}": members for i, _, members in self.enums},
            **{f"prefix{at + 1}": p.unpack_from for at, p in enumerate(self.prefixes)},
        })  # fmt: skip

    @cached_property
    def encode(self) -> Callable[[list[bytes], Sequence[Any]], None]:
        """``encode(parts, records)``: the loop, written out for this record type (a loop
        over its fields costs more than the fields themselves: ~1 µs a record)."""
        names = [f"r.{name}" for name in self.names]
        checks = [f"if len({names[i]}) != {DIGEST_SIZE}: raise Unusual" for i in self.digests]
        checks += [f"if type({names[i]}) is not enum{i}: raise Unusual" for i, *_ in self.enums]
        out = [f"pack({', '.join([*names, 'len(v0)'])}), v0"]
        for at, (name, limit, text, _prefix) in enumerate(self.fields):
            take = f"r.{name}.encode('utf-8')" if text else f"bytes(r.{name})"
            checks.append(f"v{at} = {take}")
            checks.append(f"if len(v{at}) > {limit}: raise Unusual")
            if at:
                out.append(f"prefix{at}(len(v{at})), v{at}")
        body = "\n".join(f"            {line}" for line in checks)
        source = (
            "def encode(parts, records):\n"
            "    for r in records:\n"
            "        try:\n"
            f"{body}\n"
            "        except (Unusual, struct.error, AttributeError, TypeError, "
            "UnicodeEncodeError):\n"
            "            encode_one(parts, r)  # the general codec: raises, or clips a message\n"
            "            continue\n"
            f"        parts += ({', '.join(out)})\n"
        )
        return self._written("encode", source, {
            "pack": self.head.pack, "encode_one": self.codec.encode_into,
            **{f"enum{i}": enum for i, enum, _ in self.enums},
            **{f"prefix{at + 1}": p.pack for at, p in enumerate(self.prefixes)},
        })  # fmt: skip

    def _written(self, name: str, source: str, scope: dict[str, Any]) -> Any:
        """The function *name* that *source* defines, with *scope* (and the run's
        exceptions) as its globals."""
        scope = {"Unusual": _Unusual, "struct": struct, **scope}
        exec(compile(source, f"<RecordRun.{name} of {self.cls.__name__}>", "exec"), scope)
        return scope[name]
