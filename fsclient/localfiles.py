"""Sizes and names of the client's local file handling, in a module that imports nothing: the
folder survey (``fsclient.sync.survey``) starts a process of its own that needs them, and
should not pay for the protocol's import."""

CHUNK = 1 << 20
SMALL_FILE = 1 << 20
"""Files up to this size are read once into memory, hashed, and sent from there."""
TEMP_MARK = ".fs-tmp-"
"""In the name of a download's temp file (always ignored by a synced folder)."""
MARKER = ".fsync"
"""The folder at the top of a synced folder that holds its sync state (``DB_NAME``)."""
DB_NAME = "state.sqlite"
