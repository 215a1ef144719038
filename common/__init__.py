"""The FS packet protocol, sans-IO: bytes in, events out; events in, bytes out.

Nothing in this package touches a socket, a file or a clock. The server, the client, the tests
and the fuzzers all drive the same code.
"""
