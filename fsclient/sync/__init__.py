"""Two-way folder sync (``fsclient sync DIR``): a local state database, a stat-first scanner,
a pure three-way reconcile, a debounced folder watcher, and the engine that ties them to a
server subscription."""
