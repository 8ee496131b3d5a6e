"""When a certificate is due for rotation (pure: a certificate and a clock in, a verdict out).

Default policy, as cert-manager's: renew once two thirds of the lifetime have passed, which
leaves a third of it (months for a yearly certificate) for the old and new CA to overlap in
caBundle and for a failed renewal to be noticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

RENEW_FRACTION = 1 / 3  # renew when less than this share of the lifetime is left


@dataclass(frozen=True, slots=True)
class Rotation:
    due: bool
    remaining: timedelta  # until not-after; negative once expired
    renew_at: datetime
    reason: str


def rotation(
    cert: x509.Certificate,
    now: datetime,
    *,
    renew_before: timedelta | None = None,
) -> Rotation:
    """Whether `cert` should be replaced at `now`.

    `renew_before`: replace when less than this is left (default: a third of the lifetime).
    """
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    lifetime = not_after - not_before
    margin = renew_before if renew_before is not None else lifetime * RENEW_FRACTION
    renew_at = not_after - margin
    remaining = not_after - now
    if now >= not_after:
        reason = f"expired on {not_after:%Y-%m-%d %H:%M} UTC"
        return Rotation(True, remaining, renew_at, reason)
    if now >= renew_at:
        reason = (
            f"expires on {not_after:%Y-%m-%d %H:%M} UTC, renewal was due from {renew_at:%Y-%m-%d}"
        )
        return Rotation(True, remaining, renew_at, reason)
    if now < not_before:
        # A clock behind the issuer's: the certificate is fresh, not due.
        reason = f"not valid before {not_before:%Y-%m-%d %H:%M} UTC (clock skew?)"
        return Rotation(False, remaining, renew_at, reason)
    return Rotation(False, remaining, renew_at, f"valid, renewal due from {renew_at:%Y-%m-%d}")
