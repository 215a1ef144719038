"""How a client reaches a server safely: its token, and how it trusts the server's certificate.

Three ways to trust, as the user picks them:
- ``--tls``: the system's certificate authorities, and the host name must match;
- ``--tls-ca FILE``: a private CA (or the server's own certificate), host name checked;
- ``--tls-fingerprint HEX``: exactly one certificate, by its SHA-256, like a Syncthing device
  id. No CA is involved, so the fingerprint is checked right after the TLS handshake, before the
  token or anything else is sent.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.errors import ErrorCode, FSError
from fsclient.options import (
    DEFAULT_SERVER,
    ENV_COMPRESS,
    ENV_TLS,
    ENV_TLS_CA,
    ENV_TLS_FINGERPRINT,
    ENV_TOKEN,
)

if TYPE_CHECKING:  # loaded when a connection needs it: the parser does not (fast --help)
    import ssl


class TLSError(FSError):
    """The server's certificate is not the one this client was told to trust."""

    code = ErrorCode.AUTH_FAILED


@dataclass(frozen=True)
class Access:
    token: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_fingerprint: str = ""
    compress: str = ""
    """``--compress`` or ``$FS_COMPRESS`` (``fsclient.compress``); empty: auto."""

    def __post_init__(self) -> None:
        if self.compress:
            from fsclient.compress import CompressSetting

            CompressSetting.parse(self.compress, "--compress or FS_COMPRESS")  # fails early
        if self.tls_fingerprint:
            from common.tls import normalize_fingerprint

            object.__setattr__(self, "tls_fingerprint", normalize_fingerprint(self.tls_fingerprint))
        if self.tls_ca and not os.path.isfile(self.tls_ca):
            raise ValueError(f"--tls-ca {self.tls_ca}: no such file")

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.tls_ca) or bool(self.tls_fingerprint)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Access:
        """Options first, then the environment (``FS_TOKEN``, ``FS_TLS_CA``, ...)."""
        env = os.environ
        return cls(
            token=getattr(args, "token", None) or env.get(ENV_TOKEN, ""),
            tls=bool(getattr(args, "tls", False)) or env.get(ENV_TLS, "") not in ("", "0"),
            tls_ca=getattr(args, "tls_ca", None) or env.get(ENV_TLS_CA, ""),
            tls_fingerprint=getattr(args, "tls_fingerprint", None)
            or env.get(ENV_TLS_FINGERPRINT, ""),
            compress=getattr(args, "compress", None) or env.get(ENV_COMPRESS, ""),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        import ssl

        if self.tls_fingerprint:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the pin, checked in verify_peer, replaces it
        else:
            context = ssl.create_default_context(cafile=self.tls_ca or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def verify_peer(self, der: bytes | None, where: str) -> None:
        """Raise ``TLSError`` unless the certificate the server showed is the pinned one."""
        if not self.tls_fingerprint:
            return
        if der is None:
            raise TLSError(f"{where} showed no TLS certificate")
        import hmac

        from common.tls import fingerprint_of

        seen = fingerprint_of(der)
        if not hmac.compare_digest(seen, self.tls_fingerprint):
            raise TLSError(
                f"{where} presented a TLS certificate with fingerprint {seen}, "
                f"not the pinned {self.tls_fingerprint}: refusing to talk to it"
            )


__all__ = ["DEFAULT_SERVER", "Access", "TLSError"]
