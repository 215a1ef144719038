"""The store: every share's index, and the blob arena its content lives in.

One interface for the supervisor and the workers: the supervisor owns a ``Store`` (index and
allocator, ``index.py``; small-file batches, ``batch.py``; uploads cut short, parked to be
resumed, ``parking.py``), and workers reach it through RPC
(``fsserver.rpc``) with the plain records of ``records.py``. The bytes live in shared memory
(``arena.py``), carved by ``allocator.py``, with a staging area per worker (``staging.py``).
Another backend would implement the same calls and records; workers, hashers and the protocol
would not change.
"""

from fsserver.store.index import Store
from fsserver.store.records import (
    BatchStored,
    Blob,
    BlobKey,
    Busy,
    Change,
    ChangePage,
    Committed,
    Linked,
    ListPage,
    Opened,
    Refused,
    Reserved,
    StoreStats,
)

__all__ = [
    "BatchStored", "Blob", "BlobKey", "Busy", "Change", "ChangePage", "Committed", "Linked",
    "ListPage", "Opened", "Refused", "Reserved", "Store", "StoreStats",
]  # fmt: skip
