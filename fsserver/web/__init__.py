"""The HTTP API (``/api/v1``) and the web page (``/``), on ``--http-port``: served by the same
workers, from the same store, with the same tokens as the FS protocol."""
