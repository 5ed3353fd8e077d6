"""When certificates renew (internal/core/certlife.py), and lifetimes from cluster.kat."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.v1alpha1 import kat_pb2
from internal.core import certlife

T0 = datetime(2026, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365)


def test_renewal_is_due_after_two_thirds() -> None:
    nb, na = T0, T0 + timedelta(seconds=90)
    assert not certlife.renewal_due(T0 + timedelta(seconds=59), nb, na)
    assert certlife.renewal_due(T0 + timedelta(seconds=60), nb, na)
    assert certlife.renewal_due(na + timedelta(seconds=1), nb, na)
    assert certlife.renew_at(T0, T0 + YEAR) == T0 + YEAR * 2 / 3


def test_next_attempt_waits_until_due_then_retries_sooner_near_expiry() -> None:
    nb, na = T0, T0 + YEAR
    assert certlife.next_attempt(T0, nb, na) == YEAR * 2 / 3
    # due: retry at most every 5 minutes, more often as expiry nears, never spinning
    assert certlife.next_attempt(T0 + YEAR * 0.8, nb, na) == certlife.RETRY_MAX
    short = certlife.next_attempt(na - timedelta(seconds=20), nb, na)
    assert short == timedelta(seconds=2)
    assert certlife.next_attempt(na + timedelta(hours=1), nb, na) == timedelta(seconds=1)


def test_lifetime_from_the_cluster_configuration() -> None:
    spec = kat_pb2.ClusterConfigurationSpec()
    assert certlife.lifetime(spec) == YEAR  # a configuration stored before the fields
    spec.certificate_lifetime_hours = 720
    assert certlife.lifetime(spec) == timedelta(days=30)
    spec.certificate_lifetime_seconds = 90  # tests: seconds win
    assert certlife.lifetime(spec) == timedelta(seconds=90)
