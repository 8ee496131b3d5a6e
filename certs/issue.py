"""Issue a CA and a TLS serving certificate (no file I/O: see certs.files).

Keys are ECDSA P-256: small, fast handshakes, accepted by every Kubernetes apiserver.
The CA may sign only end-entity certificates (pathlen 0). The serving certificate carries
its names in subjectAltName and is usable only for TLS server authentication.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.sans import Sans

# Certificates start a little in the past so that a node whose clock lags still accepts them.
BACKDATE = timedelta(minutes=5)
_CN_MAX = 64


@dataclass(frozen=True, slots=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _check_days(days: float, what: str) -> None:
    # Fractions of a day are for the controller's compressed-time rotation tests.
    if days <= 0:
        raise ValueError(f"{what} must be more than 0 days, got {days}")


def make_ca(
    *, now: datetime, days: float, common_name: str | None = None, key: ec.EllipticCurvePrivateKey
) -> Issued:
    """A self-signed CA valid for `days` from `now`.

    The default CN carries the issue time and a random part, so an old and a new CA (both in a
    caBundle while a rotation overlaps) have different subjects and tools never confuse them.
    """
    _check_days(days, "--ca-days")
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imagecache"),
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                common_name or f"imagecache-ca@{int(now.timestamp())}-{secrets.token_hex(4)}",
            ),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_serving(
    ca: Issued, sans: Sans, *, now: datetime, days: float, key: ec.EllipticCurvePrivateKey
) -> Issued:
    """A serving certificate for `sans`, signed by `ca`, valid for `days` from `now`.

    Raises ValueError if the CA would expire first: a leaf outliving its CA fails
    verification from that day on, which is an outage scheduled in advance.
    """
    _check_days(days, "--days")
    not_after = now + timedelta(days=days)
    if not_after > ca.cert.not_valid_after_utc:
        left = (ca.cert.not_valid_after_utc - now).days
        raise ValueError(
            f"the CA expires on {ca.cert.not_valid_after_utc:%Y-%m-%d}, before the serving "
            f"certificate would ({not_after:%Y-%m-%d}): pass --days {max(left, 0)} or less, "
            "or make a new CA (move ca.crt and ca.key away)"
        )
    first = sans.dns[0] if sans.dns else str(sans.ips[0])
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imagecache")]
    if len(first) <= _CN_MAX:  # informational only: clients match the SANs
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, first))
    alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in sans.dns]
    alt_names += [x509.IPAddress(ip) for ip in sans.ips]
    public = key.public_key()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)
