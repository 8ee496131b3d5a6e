"""Certificate and key files: atomic writes (keys 0600), and reading back an existing CA."""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.issue import Issued

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
KEY_MODE = 0o600
CERT_MODE = 0o644


class CertFileError(Exception):
    """A file that cannot be used; the message names the file and the fix."""


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file and rename: a reader (the server's reload) never sees half a file,
    and a key never exists, even briefly, with wider permissions than `mode`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_pair(directory: Path, issued: Issued, cert_name: str, key_name: str) -> None:
    # Key first: a reader that sees the new certificate also finds its key.
    write_atomic(directory / key_name, issued.key_pem(), KEY_MODE)
    write_atomic(directory / cert_name, issued.cert_pem(), CERT_MODE)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def _spki(public: object) -> bytes:
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return b""
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_ca(directory: Path, now: datetime) -> Issued | None:
    """The CA in `directory` (ca.crt + ca.key), None if neither file is there."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() and not key_path.exists():
        return None
    if not (cert_path.exists() and key_path.exists()):
        present, missing = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        raise CertFileError(
            f"{present} exists but {missing} does not: restore it, or move {present} away "
            "to make a new CA"
        )
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path))
    except ValueError:
        raise CertFileError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(_read(key_path), password=None)
    except (ValueError, TypeError):
        raise CertFileError(
            f"{key_path} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertFileError(f"{key_path} is not an ECDSA key (this tool makes ECDSA P-256 CAs)")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CertFileError(f"{key_path} is not the key of {cert_path}: they do not match")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertFileError(f"{cert_path} is not a CA certificate (basicConstraints CA:FALSE)")
    if now >= cert.not_valid_after_utc:
        raise CertFileError(
            f"the CA {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: move "
            f"{cert_path} and {key_path} away to make a new CA"
        )
    return Issued(cert, key)
