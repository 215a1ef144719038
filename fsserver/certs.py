"""``fsserver init-tls DIR``: a self-signed certificate and key for a private deployment.

Clients pin it with ``--tls-fingerprint`` (printed here), or trust it with ``--tls-ca``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from common.tls import fingerprint_of_pem

VALID_DAYS = 3650


class CertExists(ValueError):
    """Part of a certificate pair is already there; it is never overwritten."""


def existing_fingerprint(folder: str) -> str | None:
    """The fingerprint of a pair already in *folder* (running init-tls again changes nothing:
    pinned clients keep working); None if there is none."""
    cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    has_cert, has_key = cert.exists(), key.exists()
    if has_cert and has_key:
        return fingerprint_of_pem(cert.read_text())
    if has_cert or has_key:
        found = cert if has_cert else key
        raise CertExists(f"{found} exists without its pair; move it away and run init-tls again")
    return None


def init_tls(folder: str) -> str:
    """Write ``folder/cert.pem`` and ``folder/key.pem``; return the certificate's fingerprint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fsserver {host}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(host),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    fd = os.open(out / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (out / "cert.pem").write_text(cert_pem)
    return fingerprint_of_pem(cert_pem)
