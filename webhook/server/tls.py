"""The serving TLS context, and its reload when the certificate files change.

Reload without restart: the files are polled (content hash, so a Kubernetes Secret volume's
`..data` symlink swap is seen like any rewrite). A changed pair is loaded into a NEW
SSLContext, checked (the key must match the certificate), and only then made current. The
listening context's SNI callback, which OpenSSL calls on every ClientHello (with or without
SNI), hands each new handshake to the current context; connections already open keep theirs.

Why not `load_cert_chain` again on the listening context: OpenSSL keeps one certificate per
key type in a context, so loading an RSA pair over an ECDSA one (cert-manager's default after
our ECDSA bootstrap certificate) leaves the old ECDSA certificate in place and still offered
to clients; and a failed load can leave a context with a certificate but no key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from webhook.logs import log
from webhook.server.polling import poll_forever

# Forward secrecy only for TLS 1.2 (TLS 1.3 suites are all AEAD with ephemeral keys).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsConfigError(Exception):
    """The certificate or key cannot be used; the message names the file and the problem."""


class TlsFilesUnreadable(TlsConfigError):
    """A file cannot be read (missing, permissions): often a moment in the middle of an update."""


@dataclass(frozen=True, slots=True)
class Pair:
    cert: bytes
    key: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.cert + b"\0" + self.key).hexdigest()


def read_pair(cert_path: Path, key_path: Path) -> Pair:
    try:
        return Pair(cert_path.read_bytes(), key_path.read_bytes())
    except OSError as exc:
        raise TlsFilesUnreadable(f"cannot read {exc.filename}: {exc.strerror or exc}") from None


def new_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])  # aiohttp speaks HTTP/1.1 only
    return context


def _describe(pair: Pair) -> dict[str, str]:
    try:
        cert = x509.load_pem_x509_certificate(pair.cert)
    except ValueError:
        return {}
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def context_for(pair: Pair, cert_name: str, key_name: str) -> ssl.SSLContext:
    """A server context holding `pair`; TlsConfigError if the pair is unusable.

    `load_cert_chain` reads files only, so the bytes (read once, so the certificate and key
    are the pair that was checked) go through a private temp directory.
    """
    context = new_context()
    with tempfile.TemporaryDirectory(prefix="imagecache-tls-") as tmp:
        cert_file, key_file = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        for path, data in ((cert_file, pair.cert), (key_file, pair.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            if "KEY_VALUES_MISMATCH" in str(reason).upper():
                problem = f"the key in {key_name} does not match the certificate in {cert_name}"
            else:
                problem = f"{cert_name} / {key_name} are not a PEM certificate and key ({reason})"
            raise TlsConfigError(problem) from None
    return context


class TlsReloader:
    """Owns the listening context and keeps it serving the newest valid pair from disk."""

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        logger: logging.Logger,
        on_reload: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self.cert_path, self.key_path = cert_path, key_path
        self.logger = logger
        self.on_reload = on_reload
        pair = read_pair(cert_path, key_path)
        self.context = context_for(pair, str(cert_path), str(key_path))
        self.context.sni_callback = self._select
        self.current = self.context
        self._seen = pair.digest  # the pair loaded, or the last one that failed
        self._read_error: str | None = None
        log(logger, logging.INFO, "serving certificate loaded", **_describe(pair))

    def _select(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        current = self.current
        if current is not self.context:
            conn.context = current

    def _load_if_changed(self) -> tuple[ssl.SSLContext, Pair] | None:
        """Runs in a worker thread: file reads and key parsing stay off the event loop."""
        pair = read_pair(self.cert_path, self.key_path)
        if pair.digest == self._seen:
            return None
        self._seen = pair.digest
        return context_for(pair, str(self.cert_path), str(self.key_path)), pair

    async def check(self) -> None:
        """Look at the files once; load them if they changed."""
        try:
            loaded = await asyncio.to_thread(self._load_if_changed)
        except TlsFilesUnreadable as exc:
            # A Secret update or a copy in progress; try again on the next poll.
            if str(exc) != self._read_error:
                log(self.logger, logging.WARNING, "certificate files unreadable", error=str(exc))
            self._read_error = str(exc)
            return
        except TlsConfigError as exc:
            message = str(exc)
            self._read_error = None
            self.on_reload(False)
            log(
                self.logger,
                logging.ERROR,
                "new certificate not loaded, still serving the previous one",
                error=message,
            )
            return
        self._read_error = None
        if loaded is None:
            return
        self.current, pair = loaded
        self.on_reload(True)
        log(self.logger, logging.INFO, "serving certificate reloaded", **_describe(pair))

    async def run(self, interval: float) -> None:
        await poll_forever(self.check, interval, self.logger, "certificate reload")

