"""Certificate and caches-file reloads without restart, on the real TLS server.

The certificate swap happens under load: clients post reviews in a loop (on kept-alive and
on fresh connections) while the Secret-like volume's `..data` symlink is swapped to a pair
from a NEW CA. No request may fail, and new connections must then present the new pair.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from server_fixtures import (
    CACHES_YAML,
    Connection,
    SecretVolume,
    ca_subject,
    client_context,
    fresh_issuer,
    generate_certs,
    options,
    require_reviews,
    running,
    wait_for,
)

from webhook.server.runtime import Options, Webhook

CLIENTS_KEEPALIVE = 4
CLIENTS_FRESH = 4  # a new TLS handshake per request: these hit the swap itself


@pytest.fixture
def two_cas(tmp_path: Path) -> tuple[Path, Path]:
    return generate_certs(tmp_path / "old"), generate_certs(tmp_path / "new")


@pytest.fixture
def caches_file(tmp_path: Path) -> Path:
    path = tmp_path / "caches.yaml"
    path.write_text(CACHES_YAML)
    return path


def _write(path: Path, text: str | None) -> None:
    """Replace (or, with None, remove) a file the way an editor or a ConfigMap update does."""
    if text is None:
        path.unlink()
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _reloads(webhook: Webhook, result: str) -> float:
    value: float = webhook.metrics.tls_reloads[result]._value.get()
    return value


def _mounted(tmp_path: Path, pair: Path, caches_file: Path) -> tuple[SecretVolume, Options]:
    """A Secret volume holding `pair`, and the server's options that serve from it."""
    volume = SecretVolume(tmp_path / "secret")
    volume.update_from(pair)
    return volume, options(volume.cert, volume.key, caches=str(caches_file))


async def test_certificate_swap_under_load(
    tmp_path: Path, two_cas: tuple[Path, Path], caches_file: Path
) -> None:
    old, new = two_cas
    volume, opts = _mounted(tmp_path, old, caches_file)
    body = require_reviews()[0].read_bytes()
    both = client_context(old / "ca.crt", new / "ca.crt")
    old_issuer, new_issuer = ca_subject(old / "ca.crt"), ca_subject(new / "ca.crt")
    failures: list[str] = []
    issuers_after_swap: Counter[str] = Counter()
    answered = Counter[str]()
    swapped = asyncio.Event()
    stop = asyncio.Event()

    async def client(name: str, fresh: bool) -> None:
        connection: Connection | None = None
        while not stop.is_set():
            was_swapped = swapped.is_set()
            try:
                if connection is None:
                    connection = await Connection.open(webhook.port, both)
                    if was_swapped:
                        issuers_after_swap[connection.issuer] += 1
                status, answer = await connection.request("POST", "/mutate", body, close=fresh)
                if status != 200 or b'"allowed":true' not in answer:
                    failures.append(f"{name}: HTTP {status} {answer[:200]!r}")
                answered["after" if was_swapped else "before"] += 1
            except (ssl.SSLError, OSError, asyncio.IncompleteReadError) as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
            if fresh and connection is not None:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    async with running(opts) as webhook:
        tasks = [
            asyncio.create_task(client(f"keepalive-{n}", False)) for n in range(CLIENTS_KEEPALIVE)
        ]
        tasks += [asyncio.create_task(client(f"fresh-{n}", True)) for n in range(CLIENTS_FRESH)]
        await wait_for(lambda: answered["before"] >= 50 or bool(failures), what="load")
        assert await fresh_issuer(webhook.port, old / "ca.crt") == old_issuer

        volume.update_from(new)  # ..data now points at the new CA's pair
        swapped.set()
        await wait_for(lambda: _reloads(webhook, "success") == 1, what="the reload")
        await wait_for(
            lambda: issuers_after_swap[new_issuer] >= 20 or bool(failures),
            what="handshakes after the reload",
        )
        stop.set()
        await asyncio.gather(*tasks)

        assert failures == [], failures[:5]
        assert _reloads(webhook, "error") == 0
        # New connections present the new certificate: a client trusting only the new CA
        # connects, one trusting only the old CA no longer can.
        assert await fresh_issuer(webhook.port, new / "ca.crt") == new_issuer
        with pytest.raises(ssl.SSLCertVerificationError):
            await fresh_issuer(webhook.port, old / "ca.crt")
    assert answered["before"] >= 50 and answered["after"] >= 20
    assert set(issuers_after_swap) <= {old_issuer, new_issuer}


async def test_kept_alive_connection_outlives_the_swap(
    tmp_path: Path, two_cas: tuple[Path, Path], caches_file: Path
) -> None:
    old, new = two_cas
    volume, opts = _mounted(tmp_path, old, caches_file)
    async with running(opts) as webhook:
        connection = await Connection.open(webhook.port, client_context(old / "ca.crt"))
        try:
            assert (await connection.request("GET", "/healthz"))[0] == 200
            volume.update_from(new)
            await wait_for(lambda: _reloads(webhook, "success") == 1, what="the reload")
            # The connection made before the swap goes on working, with the old certificate.
            assert (await connection.request("GET", "/healthz"))[0] == 200
            assert connection.issuer == ca_subject(old / "ca.crt")
        finally:
            connection.close()
        assert await fresh_issuer(webhook.port, new / "ca.crt") == ca_subject(new / "ca.crt")


async def test_mismatched_pair_keeps_the_old_one(
    tmp_path: Path,
    two_cas: tuple[Path, Path],
    caches_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, new = two_cas
    volume, opts = _mounted(tmp_path, old, caches_file)
    async with running(opts) as webhook:
        # The new CA's certificate with the old key: the key does not match.
        volume.update(
            {"tls.crt": (new / "tls.crt").read_bytes(), "tls.key": (old / "tls.key").read_bytes()}
        )
        await wait_for(lambda: _reloads(webhook, "error") == 1, what="the failed reload")
        assert await fresh_issuer(webhook.port, old / "ca.crt") == ca_subject(old / "ca.crt")
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1
        assert "does not match the certificate" in errors[0].fields["error"]  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)  # polls go on; the same bad pair is not reported again
        assert _reloads(webhook, "error") == 1

        volume.update({"tls.crt": b"not a certificate", "tls.key": b"nor a key"})
        await wait_for(lambda: _reloads(webhook, "error") == 2, what="the second failed reload")
        assert await fresh_issuer(webhook.port, old / "ca.crt") == ca_subject(old / "ca.crt")

        volume.update_from(new)  # and a good pair is taken again
        await wait_for(lambda: _reloads(webhook, "success") == 1, what="the good reload")
        assert await fresh_issuer(webhook.port, new / "ca.crt") == ca_subject(new / "ca.crt")


def _rsa_self_signed(directory: Path) -> Path:
    """An RSA pair, as cert-manager issues by default (our own pairs are ECDSA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa-self-signed")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir()
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory


async def test_swap_to_an_rsa_certificate(
    tmp_path: Path, two_cas: tuple[Path, Path], caches_file: Path
) -> None:
    # After our ECDSA pair, an RSA one must be what new connections get (loading it into the
    # same SSLContext would keep offering the old ECDSA certificate beside it).
    old, _ = two_cas
    rsa_dir = _rsa_self_signed(tmp_path / "rsa")
    volume, opts = _mounted(tmp_path, old, caches_file)
    async with running(opts) as webhook:
        volume.update_from(rsa_dir)
        await wait_for(lambda: _reloads(webhook, "success") == 1, what="the reload")
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            context = client_context(rsa_dir / "tls.crt")
            context.maximum_version = version
            connection = await Connection.open(webhook.port, context)
            assert connection.issuer == "CN=rsa-self-signed"
            connection.close()


async def test_caches_file_reloads_and_keeps_the_last_good_one(
    tmp_path: Path, two_cas: tuple[Path, Path], caches_file: Path
) -> None:
    old, _ = two_cas
    opts = options(old / "tls.crt", old / "tls.key", caches=str(caches_file))
    async with running(opts) as webhook:
        resyncs = webhook.metrics.resyncs
        assert len(webhook.state.index) == 2 and resyncs._value.get() == 1
        _write(caches_file, CACHES_YAML.split("---")[0])  # only the nginx cache
        await wait_for(lambda: len(webhook.state.index) == 1, what="the reload")
        assert resyncs._value.get() == 2

        _write(caches_file, "kind: Pod\nmetadata: {name: x}\n")  # not ImageCaches
        await asyncio.sleep(0.6)
        assert len(webhook.state.index) == 1 and resyncs._value.get() == 2
        _write(caches_file, None)  # gone for a while (an editor's save, a ConfigMap swap)
        await asyncio.sleep(0.6)
        assert len(webhook.state.index) == 1

        _write(caches_file, CACHES_YAML)
        await wait_for(lambda: len(webhook.state.index) == 2, what="the good file again")
        assert resyncs._value.get() == 3
        assert webhook.state.index.get("tools") is not None
