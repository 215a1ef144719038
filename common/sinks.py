"""Where payload bytes go: ``DataChunk`` events, or a ``PayloadSink`` the caller attaches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common import messages as m


@dataclass(slots=True)
class DataChunk:
    """Payload bytes of a file with no sink. ``data`` is only valid until the next receive."""

    file_id: int
    data: memoryview | bytes


Event = m.Message | DataChunk


class PayloadSink(Protocol):
    def target(self) -> memoryview:
        """Writable memory for the next payload bytes (never empty while bytes are due)."""
        ...

    def advance(self, nbytes: int) -> None:
        """*nbytes* were written at the start of the last ``target()``."""
        ...


class ViewSink:
    """A sink that fills one memoryview front to back (an extent of the store)."""

    __slots__ = ("pos", "view")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    def target(self) -> memoryview:
        return self.view[self.pos :]

    def advance(self, nbytes: int) -> None:
        self.pos += nbytes
