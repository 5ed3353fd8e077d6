"""The inventory of issued leaf certificates (/kat/pki/issued/<serial>): written by
whoever signs (the leader at join and renewal, a member for its API certificate,
init), listed by `katcall get certificates`, pruned once expired."""

from __future__ import annotations

import builtins
from datetime import datetime

from api.v1alpha1 import kat_pb2
from internal.state.keys import ISSUED_CERTIFICATES, issued_certificate_key
from internal.state.kv import TypedKV


class CertificateRecords(TypedKV):
    async def record_issued_certificate(self, record: kat_pb2.IssuedCertificate) -> None:
        await self._etcd.put(issued_certificate_key(record.serial), record.SerializeToString())

    async def list_issued_certificates(self) -> builtins.list[kat_pb2.IssuedCertificate]:
        return [v.msg for v in await self.list(ISSUED_CERTIFICATES, kat_pb2.IssuedCertificate)]

    async def prune_issued_certificates(self, now: datetime) -> int:
        """Forget certificates that expired before `now`; returns how many."""
        gone = 0
        for rec in await self.list_issued_certificates():
            if rec.not_after.ToDatetime().timestamp() < now.timestamp():
                gone += await self.delete(issued_certificate_key(rec.serial))
        return gone
