"""Certificate lifetimes and when to renew (pure).

Every leaf certificate renews itself once two thirds of its life have passed: with
365 days that leaves four months for a node that is down to come back and renew; with
a test's 90 s, 30 s."""

from __future__ import annotations

from datetime import datetime, timedelta

from api.v1alpha1 import kat_pb2

RENEW_FRACTION = 2 / 3
DEFAULT_LIFETIME = timedelta(hours=8760)
MIN_LIFETIME_SECONDS = 30
# After a failed renewal: try again after this long, at most (a tenth of the life left).
RETRY_MAX = timedelta(minutes=5)


def lifetime(spec: kat_pb2.ClusterConfigurationSpec) -> timedelta:
    """The lifetime cluster.kat sets: certificateLifetimeSeconds if set, else
    certificateLifetimeHours, else 365 days (a configuration stored before these)."""
    if spec.certificate_lifetime_seconds > 0:
        return timedelta(seconds=spec.certificate_lifetime_seconds)
    if spec.certificate_lifetime_hours > 0:
        return timedelta(hours=spec.certificate_lifetime_hours)
    return DEFAULT_LIFETIME


def renew_at(not_before: datetime, not_after: datetime) -> datetime:
    return not_before + (not_after - not_before) * RENEW_FRACTION


def renewal_due(now: datetime, not_before: datetime, not_after: datetime) -> bool:
    return now >= renew_at(not_before, not_after)


def next_attempt(now: datetime, not_before: datetime, not_after: datetime) -> timedelta:
    """How long to wait before the next renewal attempt: until two thirds of the life
    (not yet due), else a retry interval that shrinks as expiry nears (at least 1 s)."""
    due = renew_at(not_before, not_after)
    if now < due:
        return due - now
    left = max(not_after - now, timedelta(0))
    return max(timedelta(seconds=1), min(RETRY_MAX, left / 10))
