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
import hmac
import os
import ssl
from dataclasses import dataclass

from common.errors import ErrorCode, FSError

DEFAULT_SERVER = "127.0.0.1:7878"
"""The server address when neither an option nor the environment names one."""
ENV_TOKEN = "FS_TOKEN"
ENV_TLS = "FS_TLS"
ENV_TLS_CA = "FS_TLS_CA"
ENV_TLS_FINGERPRINT = "FS_TLS_FINGERPRINT"


class TLSError(FSError):
    """The server's certificate is not the one this client was told to trust."""

    code = ErrorCode.AUTH_FAILED


@dataclass(frozen=True)
class Access:
    token: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_fingerprint: str = ""

    def __post_init__(self) -> None:
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
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
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
        from common.tls import fingerprint_of

        seen = fingerprint_of(der)
        if not hmac.compare_digest(seen, self.tls_fingerprint):
            raise TLSError(
                f"{where} presented a TLS certificate with fingerprint {seen}, "
                f"not the pinned {self.tls_fingerprint}: refusing to talk to it"
            )


def add_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The token and TLS options (accepted before and after a subcommand's arguments)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--token", default=default(None), metavar="TOKEN", help=f"access token (env {ENV_TOKEN})"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help=f"use TLS, trusting the system's CAs (env {ENV_TLS}=1)",
    )
    parser.add_argument(
        "--tls-ca",
        default=default(None),
        metavar="FILE",
        help=f"use TLS, trusting this CA or certificate (env {ENV_TLS_CA})",
    )
    parser.add_argument(
        "--tls-fingerprint",
        default=default(None),
        metavar="SHA256HEX",
        help="use TLS, trusting only the certificate with this SHA-256"
        f" (env {ENV_TLS_FINGERPRINT})",
    )
