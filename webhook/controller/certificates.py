"""The webhook's certificates without cert-manager: a CA and a serving certificate kept in a
Secret, the CA(s) injected into the MutatingWebhookConfiguration's caBundle, and rotation with
overlap (the plan and its reasons are in webhook.controller.core.cert_plan; this is the I/O
around it).

Secret `<name>` (type kubernetes.io/tls): tls.crt, tls.key (what webhook pods mount), ca.crt,
ca.key, and during a rotation ca-next.crt/ca-next.key or ca-previous.crt, with the times in
annotations. The leader runs it; a conflict (409) just means another writer won: look again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from certs.issue import BACKDATE, Issued, make_ca, make_serving, new_key
from certs.sans import parse_sans
from webhook.controller.core.cert_plan import CertFacts, CertInfo, CertPlan, CertPolicy, plan
from webhook.controller.ownership import lacks_owner, with_owner
from webhook.core.names import GROUP
from webhook.kube.client import SECRET, ApiError, Kube, Resource, sleep_or_stop

log = logging.getLogger("imagecache.certificates")
WEBHOOK_CONFIG = Resource(
    "admissionregistration.k8s.io/v1",
    "MutatingWebhookConfiguration",
    "mutatingwebhookconfigurations",
    False,
)
NEXT_SINCE = f"{GROUP}/ca-next-since"
PREVIOUS_UNTIL = f"{GROUP}/ca-previous-until"
KEYS = {
    "ca": ("ca.crt", "ca.key"),
    "next": ("ca-next.crt", "ca-next.key"),
    "previous": ("ca-previous.crt", ""),
}


@dataclass(frozen=True)
class CertSettings:
    namespace: str
    secret: str
    webhook_configuration: str
    service: str
    extra_names: tuple[str, ...] = ()  # more SANs (DNS names or IPs), e.g. 127.0.0.1 in tests
    ca_days: float = 3650
    serving_days: float = 365
    overlap: timedelta = timedelta(hours=1)
    interval: float = 60.0  # seconds between checks (the caBundle may be reset by an upgrade)
    owner: dict[str, Any] | None = None  # ownerReference put on the Secret (ownership.py)

    @property
    def dns_names(self) -> list[str]:
        svc, ns = self.service, self.namespace
        return [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _load_cert(pem: bytes | None) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem) if pem else None
    except ValueError:
        return None


def _key_matches(cert: x509.Certificate, key_pem: bytes | None) -> bool:
    if not key_pem:
        return False
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _names(cert: x509.Certificate) -> frozenset[str]:
    try:
        sans = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return frozenset()
    assert isinstance(sans, x509.SubjectAlternativeName)
    dns = sans.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    return frozenset([*dns, *ips])


def _info(cert: x509.Certificate, key_pem: bytes | None, issuers: Mapping[bytes, str]) -> CertInfo:
    issuer = ""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        issuer = issuers.get(aki.key_identifier or b"", "")
    except x509.ExtensionNotFound:
        pass
    return CertInfo(
        fingerprint=_fingerprint(cert),
        not_before=cert.not_valid_before_utc + BACKDATE,  # when we issued it
        not_after=cert.not_valid_after_utc,
        issuer=issuer,
        names=_names(cert),
        key_matches=_key_matches(cert, key_pem) if key_pem is not None else True,
    )


def _ski(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return b""


def _bundle_prints(bundle_b64: str | None) -> frozenset[str]:
    if not bundle_b64:
        return frozenset()
    try:
        certs = x509.load_pem_x509_certificates(base64.b64decode(bundle_b64))
    except ValueError:
        return frozenset()
    return frozenset(_fingerprint(c) for c in certs)


def _time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def read_facts(secret: Mapping[str, Any] | None, config: Mapping[str, Any] | None) -> CertFacts:
    """The facts the plan needs, from the Secret and the webhook configuration (either absent)."""
    data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    loaded = {role: _load_cert(data.get(crt)) for role, (crt, _) in KEYS.items()}
    issuers = {_ski(c): _fingerprint(c) for c in loaded.values() if c is not None}
    infos = {
        role: _info(cert, data.get(KEYS[role][1]) if KEYS[role][1] else None, issuers)
        for role, cert in loaded.items()
        if cert is not None
    }
    serving_cert = _load_cert(data.get("tls.crt"))
    serving = _info(serving_cert, data.get("tls.key", b""), issuers) if serving_cert else None
    hooks = (config or {}).get("webhooks") or []
    return CertFacts(
        ca=infos.get("ca"),
        next_ca=infos.get("next"),
        next_since=_time(annotations.get(NEXT_SINCE)),
        previous_ca=infos.get("previous"),
        previous_until=_time(annotations.get(PREVIOUS_UNTIL)),
        serving=serving,
        bundles=tuple(_bundle_prints((h.get("clientConfig") or {}).get("caBundle")) for h in hooks),
    )


def _issued(data: Mapping[str, bytes], role: str) -> Issued | None:
    crt, key = KEYS[role]
    cert = _load_cert(data.get(crt))
    if cert is None or not key or not data.get(key):
        return None
    private = serialization.load_pem_private_key(data[key], password=None)
    return Issued(cert, private)  # type: ignore[arg-type]


def apply_plan(
    settings: CertSettings, secret: Mapping[str, Any] | None, chosen: CertPlan, now: datetime
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The Secret's new data and annotations after carrying out `chosen`."""
    old = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
    annotations = dict(((secret or {}).get("metadata") or {}).get("annotations") or {})
    data = dict(old)
    ca = _issued(old, "ca")
    if chosen.create_ca:
        ca = make_ca(now=now, days=settings.ca_days, key=new_key())
        for role in ("next", "previous"):
            for key in KEYS[role]:
                data.pop(key, None)
        annotations.pop(NEXT_SINCE, None)
        annotations.pop(PREVIOUS_UNTIL, None)
    if chosen.promote:
        nxt = _issued(old, "next")
        assert ca is not None and nxt is not None
        data["ca-previous.crt"] = ca.cert_pem()
        annotations[PREVIOUS_UNTIL] = (now + settings.overlap).isoformat()
        ca = nxt
        data.pop("ca-next.crt", None)
        data.pop("ca-next.key", None)
        annotations.pop(NEXT_SINCE, None)
    if chosen.start_rotation:
        nxt = make_ca(now=now, days=settings.ca_days, key=new_key())
        data["ca-next.crt"], data["ca-next.key"] = nxt.cert_pem(), nxt.key_pem()
        annotations[NEXT_SINCE] = now.isoformat()
    if chosen.drop_previous:
        data.pop("ca-previous.crt", None)
        annotations.pop(PREVIOUS_UNTIL, None)
    assert ca is not None
    data["ca.crt"], data["ca.key"] = ca.cert_pem(), ca.key_pem()
    if chosen.issue_serving:
        # Never outlive the CA: a leaf valid past its CA fails verification from that day on.
        left = (ca.cert.not_valid_after_utc - now).total_seconds() / 86400
        days = min(settings.serving_days, left)
        sans = parse_sans(
            settings.dns_names + [n for n in settings.extra_names if not _is_ip(n)],
            [n for n in settings.extra_names if _is_ip(n)],
        )
        serving = make_serving(ca, sans, now=now, days=days, key=new_key())
        data["tls.crt"], data["tls.key"] = serving.cert_pem(), serving.key_pem()
    return data, annotations


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def bundle_pem(data: Mapping[str, bytes], roles: tuple[str, ...]) -> bytes:
    return b"".join(data[KEYS[r][0]] for r in roles if data.get(KEYS[r][0]))


class CertificateManager:
    def __init__(
        self,
        kube: Kube,
        settings: CertSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        names = [*settings.dns_names, *settings.extra_names]
        self.policy = CertPolicy(names=frozenset(names), overlap=settings.overlap)

    async def sync(self) -> CertPlan:
        """One pass: read, plan, write the Secret if it changes, then the caBundle."""
        s = self.settings
        now = self.clock()
        secret = await self.kube.find(SECRET, s.namespace, s.secret)
        config = await self.kube.find(WEBHOOK_CONFIG, None, s.webhook_configuration)
        chosen = plan(read_facts(secret, config), self.policy, now)
        data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
        if chosen.changes_secret:
            data, annotations = apply_plan(s, secret, chosen, now)
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": with_owner({
                    "name": s.secret,
                    "namespace": s.namespace,
                    "annotations": annotations,
                    "labels": {"app.kubernetes.io/managed-by": "imagecache-controller"},
                }, s.owner),
                "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
            }
            if secret is None:
                await self.kube.create(body)
            else:
                body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                await self.kube.replace(SECRET, body)  # 409 if someone else wrote first
            for reason in chosen.reasons:
                log.info("webhook certificates: %s", reason)
        elif secret is not None and lacks_owner(secret, s.owner):  # made before ownership
            await self.kube.patch(SECRET, s.namespace, s.secret,
                                  {"metadata": {"ownerReferences": with_owner(
                                      secret["metadata"], s.owner)["ownerReferences"]}})
        if chosen.patch_bundle and config is not None:
            await self._patch_bundle(config, bundle_pem(data, chosen.bundle))
        elif config is None:
            log.warning(
                "MutatingWebhookConfiguration %s not found: caBundle not injected",
                s.webhook_configuration,
            )
        return chosen

    async def _patch_bundle(self, config: Mapping[str, Any], bundle: bytes) -> None:
        encoded = base64.b64encode(bundle).decode()
        hooks = config.get("webhooks") or []
        # JSON patch with a resourceVersion test: never overwrite a concurrent change blindly.
        ops: list[dict[str, Any]] = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": config["metadata"]["resourceVersion"],
            }
        ]
        for n, hook in enumerate(hooks):
            if (hook.get("clientConfig") or {}).get("caBundle") != encoded:
                ops.append(
                    {"op": "add", "path": f"/webhooks/{n}/clientConfig/caBundle", "value": encoded}
                )
        if len(ops) > 1:
            await self.kube.patch(
                WEBHOOK_CONFIG,
                None,
                self.settings.webhook_configuration,
                ops,
                content_type="application/json-patch+json",
            )
            log.info(
                "caBundle of %s updated (%d webhooks)",
                self.settings.webhook_configuration,
                len(ops) - 1,
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until `stop`; errors are logged and retried on the next pass."""
        while not stop.is_set():
            wait = self.settings.interval
            try:
                chosen = await self.sync()
                if chosen.wake_at is not None:
                    until = (chosen.wake_at - self.clock()).total_seconds()
                    wait = min(wait, max(until, 0.5))
            except ApiError as exc:
                log.warning("webhook certificates: %s; retrying", exc)
                wait = min(wait, 5.0)
            except Exception:
                log.exception("webhook certificates: unexpected error; retrying")
                wait = min(wait, 5.0)
            if await sleep_or_stop(stop, wait):
                return
