"""The FS client: ``fsclient.Client`` (asyncio API) and the ``fsclient`` command line.

``Client`` is loaded on first use: the command line starts in ``fsclient.__main__``, which must
run before anything heavy is imported (see there), and Python runs this file first.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from fsclient.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> object:
    if name == "Client":
        from fsclient.client import Client

        return Client
    raise AttributeError(f"module 'fsclient' has no attribute {name!r}")
