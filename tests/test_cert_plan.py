"""Certificate rotation plan: a table of situations and what must happen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from webhook.controller.core.cert_plan import CertFacts, CertInfo, CertPolicy, plan

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
NAMES = frozenset({"svc.ns.svc"})
POLICY = CertPolicy(names=NAMES, overlap=timedelta(hours=1))
CA = CertInfo("ca1", T0, T0 + 30 * DAY)
CA2 = CertInfo("ca2", T0 + 20 * DAY, T0 + 50 * DAY)
SERVING = CertInfo("s1", T0, T0 + 9 * DAY, issuer="ca1", names=NAMES)
SERVING2 = CertInfo("s2", T0 + 20 * DAY, T0 + 29 * DAY, issuer="ca2", names=NAMES)


def facts(**kw: object) -> CertFacts:
    base: dict[str, object] = {"ca": CA, "serving": SERVING, "bundles": (frozenset({"ca1"}),)}
    base.update(kw)
    return CertFacts(**base)  # type: ignore[arg-type]


CASES = [
    # (id, facts, now, expected flags, bundle roles)
    ("first install", CertFacts(), T0, {"create_ca", "issue_serving", "patch_bundle"}, ("ca",)),
    ("steady state", facts(), T0 + DAY, set(), ("ca",)),
    (
        "helm upgrade reset caBundle",
        facts(bundles=(frozenset(),)),
        T0 + DAY,
        {"patch_bundle"},
        ("ca",),
    ),
    (
        "one of two webhooks reset",
        facts(bundles=(frozenset({"ca1"}), frozenset())),
        T0 + DAY,
        {"patch_bundle"},
        ("ca",),
    ),
    ("serving near expiry", facts(), T0 + 7 * DAY, {"issue_serving"}, ("ca",)),
    (
        "serving lacks a name",
        facts(serving=CertInfo("s1", T0, T0 + 9 * DAY, "ca1", frozenset())),
        T0 + DAY,
        {"issue_serving"},
        ("ca",),
    ),
    (
        "serving key mismatch",
        facts(serving=CertInfo("s1", T0, T0 + 9 * DAY, "ca1", NAMES, False)),
        T0 + DAY,
        {"issue_serving"},
        ("ca",),
    ),
    ("serving from another CA", facts(serving=SERVING2), T0 + DAY, {"issue_serving"}, ("ca",)),
    ("no serving cert", facts(serving=None), T0 + DAY, {"issue_serving"}, ("ca",)),
    (
        "CA due: trust the next one first",
        facts(serving=CertInfo("s", T0 + 20 * DAY, T0 + 29 * DAY, "ca1", NAMES)),
        T0 + 21 * DAY,
        {"start_rotation", "patch_bundle"},
        ("ca", "next"),
    ),
    (
        "overlap not over: keep both, sign with the current",
        facts(
            next_ca=CA2,
            next_since=T0 + 21 * DAY,
            serving=CertInfo("s", T0 + 20 * DAY, T0 + 29 * DAY, "ca1", NAMES),
            bundles=(frozenset({"ca1", "ca2"}),),
        ),
        T0 + 21 * DAY + timedelta(minutes=30),
        set(),
        ("ca", "next"),
    ),
    (
        "overlap over: promote and reissue",
        facts(next_ca=CA2, next_since=T0 + 21 * DAY, bundles=(frozenset({"ca1", "ca2"}),)),
        T0 + 21 * DAY + timedelta(hours=2),
        {"promote", "issue_serving", "patch_bundle"},
        ("ca", "previous"),
    ),
    (
        "previous still needed",
        facts(
            ca=CA2,
            serving=SERVING2,
            previous_ca=CA,
            previous_until=T0 + 22 * DAY,
            bundles=(frozenset({"ca1", "ca2"}),),
        ),
        T0 + 21 * DAY,
        set(),
        ("ca", "previous"),
    ),
    (
        "previous no longer needed",
        facts(
            ca=CA2,
            serving=SERVING2,
            previous_ca=CA,
            previous_until=T0 + 22 * DAY,
            bundles=(frozenset({"ca1", "ca2"}),),
        ),
        T0 + 22 * DAY + timedelta(seconds=1),
        {"drop_previous", "patch_bundle"},
        ("ca",),
    ),
    (
        "CA expired: start over",
        facts(),
        T0 + 31 * DAY,
        {"create_ca", "issue_serving", "patch_bundle"},
        ("ca",),
    ),
    (
        "CA key lost",
        facts(ca=CertInfo("ca1", T0, T0 + 30 * DAY, key_matches=False)),
        T0 + DAY,
        {"create_ca", "issue_serving", "patch_bundle"},
        ("ca",),
    ),
]
FLAGS = ("create_ca", "start_rotation", "promote", "drop_previous", "issue_serving", "patch_bundle")


@pytest.mark.parametrize(
    ("given", "now", "flags", "roles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan(given: CertFacts, now: datetime, flags: set[str], roles: tuple[str, ...]) -> None:
    chosen = plan(given, POLICY, now)
    assert {f for f in FLAGS if getattr(chosen, f)} == flags, chosen.reasons
    assert chosen.bundle == roles
    assert bool(chosen.reasons) == chosen.changes_secret


def test_wakes_up_when_something_is_due() -> None:
    chosen = plan(facts(), POLICY, T0 + DAY)
    assert chosen.wake_at == SERVING.renew_at(1 / 3)  # the serving cert is due before the CA
    chosen = plan(
        facts(next_ca=CA2, next_since=T0 + 21 * DAY, bundles=(frozenset({"ca1", "ca2"}),)),
        POLICY,
        T0 + 21 * DAY,
    )
    assert chosen.wake_at is not None and chosen.wake_at <= T0 + 21 * DAY + timedelta(hours=1)
