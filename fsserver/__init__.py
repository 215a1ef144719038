"""The FS server: an acceptor/supervisor, uvloop connection workers, a shared-memory blob arena
and a pool of hashing processes."""
