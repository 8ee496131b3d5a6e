"""certs: what the CA and serving certificates hold, that a third party verifies the chain,
the rotation check, and `imagecache certs generate` (files, modes, CA reuse, errors)."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certs.command import main
from certs.expiry import rotation
from certs.files import CertFileError, load_ca
from certs.issue import BACKDATE, Issued, make_ca, make_serving, new_key
from certs.sans import parse_sans

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca(now=NOW, days=3650, key=new_key())


@pytest.fixture(scope="module")
def serving(ca: Issued) -> Issued:
    sans = parse_sans(["webhook.imagecache.svc", "localhost"], ["127.0.0.1", "::1"])
    return make_serving(ca, sans, now=NOW, days=365, key=new_key())


def _ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


# --- what the certificates hold ------------------------------------------------------------


def test_ca_is_a_ca_that_signs_only_end_entities(ca: Issued) -> None:
    constraints = _ext(ca.cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = _ext(ca.cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert ca.cert.issuer == ca.cert.subject
    assert ca.cert.not_valid_after_utc == NOW + timedelta(days=3650)
    assert ca.cert.not_valid_before_utc == NOW - BACKDATE


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (lambda c: _ext(c, x509.BasicConstraints).value.ca, False),
        (lambda c: _ext(c, x509.BasicConstraints).critical, True),
        (lambda c: _ext(c, x509.KeyUsage).critical, True),
        (lambda c: _ext(c, x509.KeyUsage).value.digital_signature, True),
        (lambda c: _ext(c, x509.KeyUsage).value.key_cert_sign, False),
        (lambda c: list(_ext(c, x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.SERVER_AUTH]),
        (
            lambda c: _ext(c, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName),
            ["webhook.imagecache.svc", "localhost"],
        ),
        (
            lambda c: _ext(c, x509.SubjectAlternativeName).value.get_values_for_type(
                x509.IPAddress
            ),
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        ),
        (lambda c: c.not_valid_after_utc, NOW + timedelta(days=365)),
        (lambda c: c.not_valid_before_utc, NOW - BACKDATE),
        (lambda c: isinstance(c.public_key(), ec.EllipticCurvePublicKey), True),
    ],
    ids=[
        "not-a-ca", "basic-constraints-critical", "key-usage-critical", "digital-signature",
        "no-cert-sign", "eku-server-auth-only", "dns-sans", "ip-sans", "not-after",
        "not-before-backdated", "ecdsa",
    ],
)  # fmt: skip
def test_serving_certificate(serving: Issued, check: object, expected: object) -> None:
    assert check(serving.cert) == expected  # type: ignore[operator]


def test_serving_certificate_links_to_its_ca(ca: Issued, serving: Issued) -> None:
    aki = _ext(serving.cert, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == _ext(ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert serving.cert.issuer == ca.cert.subject


def test_two_cas_have_different_subjects() -> None:
    # Both sit in a caBundle during a rotation; tools pick issuers by subject.
    first = make_ca(now=NOW, days=10, key=new_key())
    second = make_ca(now=NOW, days=10, key=new_key())  # even in the same second
    assert first.cert.subject != second.cert.subject


# --- a third party verifies the chain -------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        x509.DNSName("webhook.imagecache.svc"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ],
    ids=str,
)
def test_chain_verifies_for_every_san(ca: Issued, serving: Issued, name: x509.GeneralName) -> None:
    verifier = (
        PolicyBuilder()
        .store(Store([ca.cert]))
        .time(NOW + timedelta(days=1))
        .build_server_verifier(name)  # type: ignore[arg-type]
    )
    chain = verifier.verify(serving.cert, [])
    assert chain[-1] == ca.cert


@pytest.mark.parametrize(
    ("name", "when"),
    [
        (x509.DNSName("other.imagecache.svc"), NOW + timedelta(days=1)),
        (x509.IPAddress(ipaddress.ip_address("10.0.0.1")), NOW + timedelta(days=1)),
        (x509.DNSName("localhost"), NOW + timedelta(days=366)),  # expired
    ],
    ids=["wrong-dns", "wrong-ip", "expired"],
)
def test_chain_refused(
    ca: Issued, serving: Issued, name: x509.GeneralName, when: datetime
) -> None:
    verifier = PolicyBuilder().store(Store([ca.cert])).time(when).build_server_verifier(name)  # type: ignore[arg-type]
    with pytest.raises(VerificationError):
        verifier.verify(serving.cert, [])


def test_chain_refused_by_another_ca(serving: Issued) -> None:
    other = make_ca(now=NOW, days=10, key=new_key())
    verifier = (
        PolicyBuilder()
        .store(Store([other.cert]))
        .time(NOW + timedelta(days=1))
        .build_server_verifier(x509.DNSName("localhost"))
    )
    with pytest.raises(VerificationError):
        verifier.verify(serving.cert, [])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_verifies_generated_files(tmp_path: Path) -> None:
    argv = ["generate", "--out", str(tmp_path), "--dns", "localhost", "--ip", "127.0.0.1"]
    assert main(argv) == 0
    for check in (["-verify_hostname", "localhost"], ["-verify_ip", "127.0.0.1"]):
        result = subprocess.run(
            ["openssl", "verify", "-purpose", "sslserver", *check,
             "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    wrong = subprocess.run(
        ["openssl", "verify", "-verify_ip", "10.1.2.3",
         "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert wrong.returncode != 0


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dns", "ips", "expected_dns", "expected_ips"),
    [
        (["Webhook.NS.svc."], [], ("webhook.ns.svc",), ()),
        (["a", "a", "b"], ["127.0.0.1", "127.0.0.1"], ("a", "b"), ("127.0.0.1",)),
        (["*.ns.svc"], ["::1"], ("*.ns.svc",), ("::1",)),
        ([], ["10.0.0.1"], (), ("10.0.0.1",)),
    ],
)
def test_parse_sans(
    dns: list[str], ips: list[str], expected_dns: tuple[str, ...], expected_ips: tuple[str, ...]
) -> None:
    sans = parse_sans(dns, ips)
    assert sans.dns == expected_dns
    assert tuple(str(ip) for ip in sans.ips) == expected_ips


@pytest.mark.parametrize(
    ("dns", "ips", "message"),
    [
        ([], [], "at least one name"),
        (["127.0.0.1"], [], "pass it with --ip"),
        ([], ["localhost"], "--ip 'localhost' is not an IPv4 or IPv6 address"),
        (["bad_name.svc"], [], "label 'bad_name'"),
        (["-x.svc"], [], "label '-x'"),
        (["*.svc"], [], "wildcard needs at least two labels"),
        (["a." * 130], [], "longer than 253"),
        ([" "], [], "empty name"),
    ],
)
def test_parse_sans_errors(dns: list[str], ips: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        parse_sans(dns, ips)


def test_serving_certificate_cannot_outlive_its_ca(ca: Issued) -> None:
    short = make_ca(now=NOW, days=30, key=new_key())
    with pytest.raises(ValueError, match="pass --days 30 or less"):
        make_serving(short, parse_sans(["a"], []), now=NOW, days=31, key=new_key())


@pytest.mark.parametrize("days", [0, -1])
def test_days_must_be_positive(ca: Issued, days: int) -> None:
    with pytest.raises(ValueError, match="--days must be more than 0 days"):
        make_serving(ca, parse_sans(["a"], []), now=NOW, days=days, key=new_key())
    with pytest.raises(ValueError, match="--ca-days must be more than 0 days"):
        make_ca(now=NOW, days=days, key=new_key())


# --- rotation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "renew_before", "due", "reason"),
    [
        (NOW + timedelta(days=1), None, False, "valid, renewal due from 2027-01-30"),
        (NOW + timedelta(days=242), None, False, "valid"),
        (NOW + timedelta(days=245), None, True, "renewal was due from 2027-01-30"),
        (NOW + timedelta(days=365), None, True, "expired on 2027-06-01 12:00 UTC"),
        (NOW + timedelta(days=400), None, True, "expired"),
        (NOW - timedelta(hours=1), None, False, "clock skew"),
        (NOW + timedelta(days=300), timedelta(days=30), False, "valid"),
        (NOW + timedelta(days=336), timedelta(days=30), True, "renewal was due"),
    ],
)
def test_rotation(
    serving: Issued, at: datetime, renew_before: timedelta | None, due: bool, reason: str
) -> None:
    verdict = rotation(serving.cert, at, renew_before=renew_before)
    assert verdict.due is due
    assert reason in verdict.reason
    assert verdict.remaining == serving.cert.not_valid_after_utc - at


# --- the command ----------------------------------------------------------------------------


def _generate(out: Path, *extra: str) -> int:
    return main(["generate", "--out", str(out), *extra])


def test_generate_writes_four_files_with_key_modes(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    assert _generate(out, "--dns", "svc.ns.svc", "--ip", "127.0.0.1", "--days", "7") == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "tls.crt": 0o644, "tls.key": 0o600}
    leaf = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc - BACKDATE).days
    assert days == 7
    key = serialization.load_pem_private_key((out / "tls.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == leaf.public_key()


def test_generate_keeps_an_existing_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _generate(tmp_path, "--dns", "a") == 0
    ca_before = (tmp_path / "ca.crt").read_bytes(), (tmp_path / "ca.key").read_bytes()
    leaf_before = (tmp_path / "tls.crt").read_bytes()
    assert _generate(tmp_path, "--dns", "b") == 0
    assert "kept the CA" in capsys.readouterr().out
    assert ((tmp_path / "ca.crt").read_bytes(), (tmp_path / "ca.key").read_bytes()) == ca_before
    assert (tmp_path / "tls.crt").read_bytes() != leaf_before
    ca = x509.load_pem_x509_certificate(ca_before[0])
    leaf = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    verifier = (
        PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("b"))
    )
    verifier.verify(leaf, [])


def test_generate_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        assert _generate(tmp_path, "--dns", "a") == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "tls.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600


def _other_key_pem() -> bytes:
    return new_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _leaf_as_ca(directory: Path) -> None:
    shutil.copy(directory / "tls.crt", directory / "ca.crt")
    shutil.copy(directory / "tls.key", directory / "ca.key")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "ca.key").unlink(), "ca.crt exists but .*ca.key does not"),
        (lambda d: (d / "ca.crt").unlink(), "ca.key exists but .*ca.crt does not"),
        (lambda d: (d / "ca.key").write_bytes(_other_key_pem()), "is not the key of"),
        (lambda d: (d / "ca.crt").write_text("junk"), "is not a PEM certificate"),
        (lambda d: (d / "ca.key").write_text("junk"), "is not an unencrypted PEM private key"),
        (_leaf_as_ca, "is not a CA certificate"),
    ],
    ids=["no-key", "no-cert", "key-mismatch", "cert-junk", "key-junk", "leaf-as-ca"],
)
def test_generate_refuses_a_broken_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object, message: str
) -> None:
    assert _generate(tmp_path, "--dns", "a") == 0
    damage(tmp_path)  # type: ignore[operator]
    capsys.readouterr()
    assert _generate(tmp_path, "--dns", "a") == 1
    err = capsys.readouterr().err
    assert err.startswith("imagecache certs: error: ")
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_expired_ca_is_refused(tmp_path: Path) -> None:
    old = make_ca(now=NOW - timedelta(days=20), days=10, key=new_key())
    (tmp_path / "ca.crt").write_bytes(old.cert_pem())
    (tmp_path / "ca.key").write_bytes(old.key_pem())
    with pytest.raises(CertFileError, match=r"expired on .* move"):
        load_ca(tmp_path, NOW)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["generate", "--out", "{tmp}"], 1, "at least one name"),
        (["generate", "--out", "{tmp}", "--ip", "nope"], 1, "--ip 'nope' is not"),
        (["generate", "--out", "{tmp}", "--dns", "a", "--days", "99999"], 1, "pass --days"),
        (["generate", "--dns", "a"], 2, "--out"),
        ([], 2, "COMMAND"),
        (["generate", "--out", "/proc/imagecache-nope", "--dns", "a"], 1, "cannot write"),
    ],
)
def test_command_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
