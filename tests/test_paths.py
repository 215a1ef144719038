"""Path, prefix and name rules (``common.paths``; docs/PROTOCOL.md 8.1 and 8.2)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ErrorCode, InvalidName, InvalidPath
from common.limits import MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_SEGMENT_BYTES
from common.paths import check_name, normalize_path, normalize_prefix

# -- normalize_path: accepted ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "a",
        "a.txt",
        "dir/file.txt",
        "a/b/c/d/e/f/g",
        "...",
        "..a",
        "a..",
        ".hidden",
        "dir/.hidden/x",
        "with space/and-dash_and.dot",
        " leading and trailing ",
        "\u00e9t\u00e9/\u65e5\u672c\u8a9e/\U0001f600.png",
        "\u0440\u0443\u0441/\u05e2\u05d1\u05e8\u05d9\u05ea",
        "a:b*c?d<e>f|g\"h'",
        "x" * MAX_SEGMENT_BYTES,
        "\u00e9" * (MAX_SEGMENT_BYTES // 2),
        "a\u0085b",  # C1 controls are not refused (only U+0000-U+001F and U+007F are)
    ],
)
def test_accepts_normal_paths(path):
    assert normalize_path(path) == path


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("e\u0301", "\u00e9"),
        ("cafe\u0301/re\u0301sume\u0301.txt", "caf\u00e9/r\u00e9sum\u00e9.txt"),
        ("A\u030a", "\u00c5"),
        ("\u212b", "\u00c5"),  # ANGSTROM SIGN is a singleton decomposition
        ("\u1100\u1161", "\uac00"),  # conjoining jamo compose
        ("o\u0308\u0304", "\u022b"),
    ],
)
def test_normalises_to_nfc(raw, canonical):
    assert normalize_path(raw) == canonical
    assert normalize_path(canonical) == canonical


def test_limits_are_counted_after_nfc():
    # 'e' + combining acute is 3 bytes; NFC makes it the 2-byte U+00E9
    segment = "e\u0301" * (MAX_SEGMENT_BYTES // 2)
    assert len(segment.encode()) > MAX_SEGMENT_BYTES
    assert normalize_path(segment) == "\u00e9" * (MAX_SEGMENT_BYTES // 2)
    path = "/".join(["e\u0301" * 100] * 19)
    assert len(path.encode()) > MAX_PATH_BYTES
    assert len(normalize_path(path).encode()) <= MAX_PATH_BYTES


def exact_path(nbytes: int) -> str:
    """A valid path of exactly *nbytes* bytes."""
    segments = []
    left = nbytes
    while left > 201:
        segments.append("s" * 200)
        left -= 201
    segments.append("t" * left)
    path = "/".join(segments)
    assert len(path.encode()) == nbytes
    return path


def test_path_length_boundary():
    assert normalize_path(exact_path(MAX_PATH_BYTES)) == exact_path(MAX_PATH_BYTES)
    with pytest.raises(InvalidPath):
        normalize_path(exact_path(MAX_PATH_BYTES + 1))


# -- normalize_path: refused -------------------------------------------------------------------

REFUSED = [
    "",
    "/",
    "/abs",
    "//server/share",
    "..",
    ".",
    "a/..",
    "../a",
    "a/../b",
    "a/./b",
    "./a",
    "a/.",
    "a//b",
    "a/",
    "a/b/",
    "a\x00b",
    "\x00",
    "a\nb",
    "a\rb",
    "a\tb",
    "\x1b[31m",
    "a\x7fb",
    "a\\b",
    "..\\etc",
    "C:\\x",
    "\ud800",
    "a/\udcff",
    "\ud83d\ude00",  # a surrogate pair is not a character in a str
    "x" * (MAX_PATH_BYTES + 1),
    "\u00e9" * (MAX_PATH_BYTES // 2 + 1),
    "x" * (MAX_SEGMENT_BYTES + 1),
    "ok/" + "y" * (MAX_SEGMENT_BYTES + 1) + "/ok",
    "\u00e9" * (MAX_SEGMENT_BYTES // 2 + 1),  # 256 bytes in 128 characters
    "a/" + "\u20ac" * 85 + "x",  # 256 bytes in 86 characters
]


@pytest.mark.parametrize("path", REFUSED, ids=repr)
def test_refuses_bad_paths(path):
    with pytest.raises(InvalidPath) as info:
        normalize_path(path)
    assert info.value.code is ErrorCode.INVALID_PATH
    assert info.value.message


@pytest.mark.parametrize("code", [*range(0x20), 0x7F])
def test_refuses_every_control_character(code):
    for path in (chr(code), f"a{chr(code)}", f"dir/{chr(code)}x", f"{chr(code)}/x"):
        with pytest.raises(InvalidPath):
            normalize_path(path)


# -- normalize_path: properties ----------------------------------------------------------------

segment_chars = st.characters(
    exclude_categories=("Cs",),
    exclude_characters="/\\" + "".join(map(chr, [*range(0x20), 0x7F])),
)
segments = st.text(segment_chars, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(segments, min_size=1, max_size=6))
def test_valid_paths_are_accepted_and_canonical(parts):
    path = "/".join(parts)
    result = normalize_path(path)
    assert result == unicodedata.normalize("NFC", path)
    assert normalize_path(result) == result, "idempotent"
    assert result.split("/") == [unicodedata.normalize("NFC", p) for p in parts]


@settings(max_examples=500, deadline=None)
@given(path=st.text(max_size=30) | st.text(st.sampled_from("ab./\\\x00\n\u0301e"), max_size=12))
def test_any_text_is_either_canonical_or_invalid(path):
    """Nothing but InvalidPath escapes, and an accepted path obeys every rule."""
    try:
        result = normalize_path(path)
    except InvalidPath:
        return
    assert result == unicodedata.normalize("NFC", result)
    assert not result.startswith("/")
    assert "\\" not in result
    assert all(ord(ch) >= 0x20 and ord(ch) != 0x7F for ch in result)
    encoded = result.encode("utf-8")  # no lone surrogates
    assert 0 < len(encoded) <= MAX_PATH_BYTES
    for segment in result.split("/"):
        assert segment not in ("", ".", "..")
        assert len(segment.encode()) <= MAX_SEGMENT_BYTES
    assert normalize_path(result) == result


# -- normalize_prefix --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "canonical"),
    [
        ("", ""),
        ("docs", "docs"),
        ("docs/", "docs/"),
        ("docs/rep", "docs/rep"),
        ("docs//", "docs/"),  # documented: all trailing slashes strip, one comes back
        ("a/b/c/", "a/b/c/"),
        ("e\u0301", "\u00e9"),
        ("caf\u0065\u0301/", "caf\u00e9/"),
        (".hidden/", ".hidden/"),
    ],
)
def test_normalize_prefix(prefix, canonical):
    assert normalize_prefix(prefix) == canonical


@pytest.mark.parametrize(
    "prefix",
    ["/", "//", "/docs", "/docs/", "..", "../", "a/../", "a/./b", "a//b/", "a\\b", "a\x00", "\n/"],
    ids=repr,
)
def test_normalize_prefix_refuses(prefix):
    with pytest.raises(InvalidPath):
        normalize_prefix(prefix)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(segments, min_size=1, max_size=4), slash=st.booleans())
def test_prefix_of_a_valid_path(parts, slash):
    prefix = "/".join(parts) + ("/" if slash else "")
    result = normalize_prefix(prefix)
    assert result == normalize_path("/".join(parts)) + ("/" if slash else "")
    assert normalize_prefix(result) == result


# -- check_name --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["default", "a", "A-Z_0.9", "laptop-1", "x" * MAX_NAME_BYTES, "-dash", "_under", "a.b.c", "9"],
)
def test_check_name_accepts(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        ".hidden",
        "x" * (MAX_NAME_BYTES + 1),
        "a b",
        "a/b",
        "a\\b",
        "caf\u00e9",
        "a\x00",
        "tab\t",
        "emoji\U0001f600",
        "semi;colon",
        "x:y",
    ],
    ids=repr,
)
def test_check_name_refuses(name):
    with pytest.raises(InvalidName) as info:
        check_name(name)
    assert info.value.code is ErrorCode.INVALID_SHARE


def test_check_name_says_what_it_checked():
    with pytest.raises(InvalidName, match="client id"):
        check_name("bad name", "client id")
    with pytest.raises(InvalidName, match="share name"):
        check_name("")


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=70))
def test_check_name_property(name):
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    ok = 0 < len(name) <= MAX_NAME_BYTES and set(name) <= allowed and not name.startswith(".")
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(InvalidName):
            check_name(name)


@pytest.mark.parametrize("name", ["\udcff", "share\udce9"])
def test_check_name_refuses_surrogates_cleanly(name):
    with pytest.raises(InvalidName):
        check_name(name)
