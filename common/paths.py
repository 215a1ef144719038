"""Remote path and name rules, shared by the server (paths from clients) and the client (paths
from the server), so that neither side can be tricked into leaving its tree."""

import re
import unicodedata

from common.errors import InvalidName, InvalidPath
from common.limits import MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_SEGMENT_BYTES

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_SEGMENT = rf"(?!\.\.?(?:/|\Z))[^\x00-\x1f\x7f\\/]{{1,{MAX_SEGMENT_BYTES}}}"
_PLAIN_PATH = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
"""An ASCII path (so NFC, one byte per character) without control characters or
backslashes, of segments that are not empty, ``.`` or ``..`` and at most MAX_SEGMENT_BYTES
long: valid and canonical as it is. One match, where a split and a loop
over the segments cost twice as much, once per file of a sync on both sides."""


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def normalize_path(path: str) -> str:
    """Return *path* in canonical form (NFC, relative, ``/``-separated) or raise InvalidPath.

    Refused: empty paths, absolute paths, empty, ``.`` or ``..`` segments, backslashes, NUL and
    other control characters, more than ``MAX_PATH_BYTES`` (4000) bytes, or a segment of more
    than ``MAX_SEGMENT_BYTES`` (255) bytes.
    """
    if path.isascii() and len(path) <= MAX_PATH_BYTES and _PLAIN_PATH.fullmatch(path):
        return path  # the common case, checked without a character-by-character walk
    if not path:
        raise InvalidPath("empty path")
    if "\x00" in path:
        raise InvalidPath("path contains a NUL byte")
    if _has_control(path):
        raise InvalidPath(f"path contains a control character: {path!r}")
    if path.startswith("/"):
        raise InvalidPath(f"absolute path not allowed: {path!r}")
    if "\\" in path:
        raise InvalidPath(f"backslash not allowed in path: {path!r}")
    path = unicodedata.normalize("NFC", path)
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidPath(f"path longer than {MAX_PATH_BYTES} bytes")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidPath(f"path segment {segment!r} not allowed: {path!r}")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidPath(f"path segment longer than {MAX_SEGMENT_BYTES} bytes")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPath("path is not valid UTF-8") from exc
    return path


def is_canonical(path: str) -> bool:
    """*path* is valid and already in canonical form (``normalize_path`` leaves it as it is);
    raises InvalidPath, as ``normalize_path`` does, if it is not valid at all."""
    return normalize_path(path) == path


def normalize_prefix(prefix: str) -> str:
    """A listing prefix: like a path but may be empty or end in ``/`` or mid-segment."""
    if not prefix:
        return ""
    stripped = prefix.rstrip("/")
    if not stripped:
        raise InvalidPath("prefix '/' is absolute; use an empty prefix to list everything")
    return normalize_path(stripped) + ("/" if prefix.endswith("/") else "")


def check_name(name: str, what: str = "share name") -> str:
    """Share names and client ids: 1-64 of ``[A-Za-z0-9._-]``, not starting with a dot."""
    if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidName(f"{what} must be 1 to {MAX_NAME_BYTES} characters")
    if name.startswith(".") or not set(name) <= _NAME_CHARS:
        raise InvalidName(f"{what} {name!r} may only use letters, digits, '.', '_' and '-'")
    return name
