"""The audit records of the store (/kat/audit/, apart from events): appended by the
leader's audit interceptor, listed by `katcall get audit`, pruned by age."""

from __future__ import annotations

import builtins
import secrets
from datetime import UTC, datetime

from api.v1alpha1 import kat_pb2
from internal.state.etcd_values import Delete
from internal.state.keys import AUDIT, audit_key
from internal.state.kv import TypedKV, decode


class AuditRecords(TypedKV):
    async def record_audit(self, record: kat_pb2.AuditRecord) -> kat_pb2.AuditRecord:
        """Store an audit record (kept until prune_audit removes it, not on a lease:
        retention is in days and must not depend on etcd's lease checkpointing)."""
        rec = kat_pb2.AuditRecord()
        rec.CopyFrom(record)
        if not rec.id:
            rec.id = secrets.token_hex(6)
        if not rec.HasField("time"):
            rec.time.FromDatetime(datetime.now(UTC))
        await self._etcd.put(audit_key(rec.time.ToNanoseconds(), rec.id), rec.SerializeToString())
        return rec

    async def list_audit(
        self, since: datetime | None = None, limit: int = 0
    ) -> builtins.list[kat_pb2.AuditRecord]:
        """Audit records oldest first, from `since` on; with `limit`, the newest that many."""
        if limit > 0:
            result = await self._etcd.get_prefix(AUDIT, limit=limit, descending=True)
            kvs = list(reversed(result.kvs))
        else:
            kvs = (await self._etcd.get_prefix(AUDIT)).kvs
        records = [decode(kat_pb2.AuditRecord, kv.value, kv.mod_revision) for kv in kvs]
        if since is not None:
            cut = int(since.timestamp() * 1e9)
            records = [r for r in records if r.time.ToNanoseconds() >= cut]
        return records

    async def prune_audit(self, before: datetime, batch: int = 100) -> int:
        """Delete audit records older than `before`; returns how many went. Reads
        keys oldest first in batches (etcd allows 128 operations per transaction),
        so a pass costs what it removes."""
        cut = audit_key(int(before.timestamp() * 1e9), "0")
        removed = 0
        while True:
            result = await self._etcd.get_prefix(AUDIT, limit=batch, keys_only=True)
            old = [kv.key for kv in result.kvs if kv.key < cut]
            if old:
                await self._etcd.txn([], [Delete(k) for k in old])
                removed += len(old)
            if len(old) < batch:
                return removed
