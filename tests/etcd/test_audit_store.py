"""Audit records in a real etcd: stored apart from events, listed oldest first,
filtered by time, and pruned by age in batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.v1alpha1 import kat_pb2
from internal.state import keys
from internal.state.store import Store
from tests.helpers import EtcdEnv, requires_etcd

pytestmark = requires_etcd


def record(when: datetime, obj: str) -> kat_pb2.AuditRecord:
    rec = kat_pb2.AuditRecord(actor="admin", verb="apply", object=obj, outcome="OK")
    rec.time.FromDatetime(when)
    return rec


async def test_audit_records_list_filter_and_prune(etcd: EtcdEnv) -> None:
    now = datetime.now(UTC)
    async with etcd.client() as client:
        store = Store(client)
        for age_days in (200, 100, 91, 89, 1):
            await store.record_audit(record(now - timedelta(days=age_days), f"w{age_days}"))
        assert [r.object for r in await store.list_audit()] == ["w200", "w100", "w91", "w89", "w1"]
        assert [r.object for r in await store.list_audit(limit=2)] == ["w89", "w1"]
        recent = await store.list_audit(since=now - timedelta(days=2))
        assert [r.object for r in recent] == ["w1"]
        assert await store.list_events() == []  # apart from events
        assert (await client.get_prefix(keys.AUDIT)).kvs
        assert await store.prune_audit(now - timedelta(days=90), batch=2) == 3
        assert [r.object for r in await store.list_audit()] == ["w89", "w1"]
        assert await store.prune_audit(now - timedelta(days=90)) == 0
