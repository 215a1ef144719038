"""TLS settings both ends share: TLS 1.2 at least, and certificate fingerprints.

A fingerprint is the SHA-256 of the certificate's DER bytes, as 64 hex characters (like a
Syncthing device id): a client that pins it needs no certificate authority at all.
"""

from __future__ import annotations

import hashlib
import ssl

FINGERPRINT_HEX = 64


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def fingerprint_of_pem(pem: str) -> str:
    return fingerprint_of(ssl.PEM_cert_to_DER_cert(pem))


def normalize_fingerprint(text: str) -> str:
    """Accept ``ab:cd:...`` or plain hex, any case; raise ValueError for anything else."""
    hexed = text.replace(":", "").strip().lower()
    if len(hexed) != FINGERPRINT_HEX or any(c not in "0123456789abcdef" for c in hexed):
        raise ValueError(f"a TLS fingerprint is {FINGERPRINT_HEX} hex characters (SHA-256)")
    return hexed


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
