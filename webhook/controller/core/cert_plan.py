"""Webhook certificate rotation as a plan over plain facts (DESIGN.md, "Defaults that protect
the cluster": rotated before expiry with the old and new CA both in caBundle during overlap).

The controller keeps a CA and a serving certificate in a Secret and the CA(s) in the webhook
configuration's caBundle. Webhook pods read the Secret through a volume, which the kubelet
refreshes late (a minute or more), so a pod may serve the old certificate for a while after the
Secret changed. The order that keeps every pod trusted:

1. CA due for renewal: make the next CA and add it to caBundle (bundle = current + next);
   keep signing with the current one.
2. After `overlap` (the apiserver has long seen the new bundle): promote. The next CA becomes
   current, the serving certificate is reissued by it, and the old CA stays in caBundle as
   `previous`, because pods still serve the old certificate until the kubelet catches up.
3. After another `overlap`: drop the previous CA from caBundle.

A serving certificate due for renewal (same CA) is simply reissued: the bundle already trusts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class CertInfo:
    fingerprint: str  # sha256 of the DER certificate
    not_before: datetime
    not_after: datetime
    issuer: str = ""  # for a serving certificate: fingerprint of the CA that signed it
    names: frozenset[str] = frozenset()  # for a serving certificate: its DNS and IP SANs
    key_matches: bool = True  # the private key stored beside it is its key

    def renew_at(self, fraction: float) -> datetime:
        return self.not_after - (self.not_after - self.not_before) * fraction


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What the Secret and the webhook configuration hold now."""

    ca: CertInfo | None = None
    next_ca: CertInfo | None = None
    next_since: datetime | None = None  # when the next CA went into caBundle
    previous_ca: CertInfo | None = None
    previous_until: datetime | None = None  # when the previous CA may leave caBundle
    serving: CertInfo | None = None
    bundles: tuple[frozenset[str], ...] = ()  # CA fingerprints in each webhook's caBundle


@dataclass(frozen=True, slots=True)
class CertPolicy:
    names: frozenset[str]  # DNS names and IPs the serving certificate must carry
    overlap: timedelta = timedelta(hours=1)
    renew_fraction: float = 1 / 3  # renew when less than this share of the lifetime is left


@dataclass(frozen=True, slots=True)
class CertPlan:
    create_ca: bool = False  # no usable CA: make one (first install, or it expired)
    start_rotation: bool = False  # make the next CA and trust it beside the current one
    promote: bool = False  # the next CA becomes current; reissue the serving certificate
    drop_previous: bool = False
    issue_serving: bool = False
    bundle: tuple[str, ...] = ()  # roles in caBundle, in order: "ca", "next", "previous"
    patch_bundle: bool = False  # some webhook's caBundle differs from `bundle`
    reasons: tuple[str, ...] = ()
    wake_at: datetime | None = None  # when the plan next changes without any event

    @property
    def changes_secret(self) -> bool:
        return (
            self.create_ca
            or self.start_rotation
            or self.promote
            or self.drop_previous
            or (self.issue_serving)
        )


def plan(facts: CertFacts, policy: CertPolicy, now: datetime) -> CertPlan:
    """What to do now to keep the webhook's TLS trusted, and when to look again."""
    reasons: list[str] = []
    ca, next_ca, previous = facts.ca, facts.next_ca, facts.previous_ca
    create_ca = start = promote = drop = issue = False
    next_since, previous_until = facts.next_since, facts.previous_until

    if ca is None or not ca.key_matches or now >= ca.not_after:
        # Nothing trusted to keep: start over (pods that serve an old certificate are refused
        # until the kubelet refreshes their Secret; failurePolicy Ignore keeps pods flowing).
        create_ca, issue = True, True
        reasons.append(
            "no usable CA: creating one"
            if ca is None
            else "the CA expired or its key is wrong: creating a new one"
        )
        next_ca = previous = None
        next_since = previous_until = None
    elif next_ca is not None and next_since is not None and now >= next_since + policy.overlap:
        promote, issue = True, True
        reasons.append("the next CA has been trusted for the overlap: signing with it now")
        previous, previous_until = ca, now + policy.overlap
        next_ca, next_since = None, None
    elif next_ca is None and now >= ca.renew_at(policy.renew_fraction):
        start = True
        reasons.append(
            f"the CA expires on {ca.not_after:%Y-%m-%d %H:%M} UTC: trusting a next CA beside it"
        )
        next_since = now
    if previous is not None and not promote and (previous_until is None or now >= previous_until):
        drop = True
        reasons.append(
            "the overlap after the last CA change is over: no longer trusting the previous CA"
        )
        previous, previous_until = None, None

    serving = facts.serving
    if not issue:
        if serving is None:
            issue, why = True, "no serving certificate"
        elif not serving.key_matches:
            issue, why = True, "the serving key does not match its certificate"
        elif ca is not None and serving.issuer != ca.fingerprint:
            issue, why = True, "the serving certificate is not signed by the current CA"
        elif not policy.names <= serving.names:
            missing = ", ".join(sorted(policy.names - serving.names))
            issue, why = True, f"the serving certificate lacks {missing}"
        elif now >= serving.renew_at(policy.renew_fraction):
            issue, why = (
                True,
                f"the serving certificate expires on {serving.not_after:%Y-%m-%d %H:%M} UTC",
            )
        if issue:
            reasons.append(f"{why}: issuing a new one")

    roles = ["ca"]
    if next_ca is not None or start:
        roles.append("next")
    if previous is not None:
        roles.append("previous")
    if create_ca or start or promote or drop:
        patch = True  # the bundle's members change
    else:
        members = [c for c in (ca, next_ca, previous) if c is not None]
        wanted = frozenset(c.fingerprint for c in members)
        patch = not facts.bundles or any(b != wanted for b in facts.bundles)
    keep_ca = None if create_ca or promote else ca
    wake = _wake_at(policy, keep_ca, next_since, previous_until, None if issue else serving)
    return CertPlan(
        create_ca, start, promote, drop, issue, tuple(roles), patch, tuple(reasons), wake
    )


def _wake_at(
    policy: CertPolicy,
    ca: CertInfo | None,
    next_since: datetime | None,
    previous_until: datetime | None,
    serving: CertInfo | None,
) -> datetime | None:
    times = []
    if ca is not None:
        times.append(ca.renew_at(policy.renew_fraction))
    if next_since is not None:
        times.append(next_since + policy.overlap)
    if previous_until is not None:
        times.append(previous_until)
    if serving is not None:
        times.append(serving.renew_at(policy.renew_fraction))
    return min(times) if times else None
