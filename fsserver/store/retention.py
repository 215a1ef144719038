"""``Retention``, a part of ``Store``: tombstones are kept for ``--tombstone-days``, then
forgotten.

A tombstone tells a client that was away that a path was deleted meanwhile; kept for ever, they
would fill the index (``--max-files``). Once one is forgotten, the share remembers the newest
version it dropped (``Share.pruned``): a client whose position is below it (away longer than
the retention) is refused a backlog (``EXPIRED``) and does a full rescan instead of trusting
its state (see ``fsclient.sync``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsserver.store.index import Share


class Retention:
    shares: dict[str, Share]
    entries: int
    journal: list[tuple[Any, ...]] | None

    def prune_tombstones(self, cutoff: float) -> int:
        """Forget the tombstones of deletes made before *cutoff* (unix time); how many."""
        gone = 0
        for name, sh in self.shares.items():
            # the share's latest change stays (a backlog ends at the share's sequence number)
            while sh.tombstones and sh.tombstones[0][0] < cutoff and sh.tombstones[0][1] < sh.seq:
                _, version, path = sh.tombstones.popleft()
                entry = sh.entries.get(path)
                if entry is None or entry.version != version:  # the path came back since
                    continue
                sh.forget(path, version)
                sh.pruned = max(sh.pruned, version)
                self.entries -= 1
                gone += 1
                if self.journal is not None:
                    self.journal.append(("gone", name, path, version))
        return gone
