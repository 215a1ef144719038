"""The FS client: ``fsclient.Client`` (asyncio API) and the ``fsclient`` command line."""

from fsclient.client import Client

__all__ = ["Client"]
