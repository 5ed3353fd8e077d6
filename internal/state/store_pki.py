"""Admin identities and certificate revocations (/kat/pki/admins/, /kat/pki/revoked/).

A revocation is one key per certificate hash, so the leader's cache of them is a plain
set followed by a watch (kat_agent/leader/revocation.py)."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence

from api.v1alpha1 import kat_pb2
from internal.state.keys import ADMINS, REVOKED, admin_key, revoked_key
from internal.state.kv import AlreadyExists, TypedKV, Versioned, WatchEvent


class PkiRecords(TypedKV):
    async def get_admin(self, name: str) -> Versioned[kat_pb2.AdminRecord] | None:
        return await self.get(admin_key(name), kat_pb2.AdminRecord)

    async def list_admins(self) -> builtins.list[kat_pb2.AdminRecord]:
        return [v.msg for v in await self.list(ADMINS, kat_pb2.AdminRecord)]

    async def put_admin(
        self, record: kat_pb2.AdminRecord, expected_revision: int | None = None
    ) -> int:
        """Create the record (expected_revision None: AlreadyExists if there is one) or
        replace the one read at `expected_revision` (else StaleWrite)."""
        if expected_revision is None:
            return await self.create(admin_key(record.name), record)
        return await self.update(admin_key(record.name), record, expected_revision)

    async def revoke_admin(
        self,
        record: kat_pb2.AdminRecord,
        expected_revision: int,
        revocations: Sequence[kat_pb2.CertificateRevocation],
    ) -> int:
        """Mark the admin revoked and refuse its certificates (none revoked already:
        AlreadyExists), in one transaction."""
        txn = self.txn().update(admin_key(record.name), record, expected_revision)
        for r in revocations:
            txn.create(revoked_key(r.certificate_sha256), r)
        return (await txn.commit()).revision

    async def revoke_certificate(self, revocation: kat_pb2.CertificateRevocation) -> None:
        """Refuse one certificate from now on (idempotent)."""
        try:
            await self.create(revoked_key(revocation.certificate_sha256), revocation)
        except AlreadyExists:
            pass

    async def list_revocations(
        self,
    ) -> tuple[builtins.list[kat_pb2.CertificateRevocation], int]:
        """Every revocation and the revision read at (watch from revision + 1)."""
        items, revision = await self.list_with_revision(REVOKED, kat_pb2.CertificateRevocation)
        return [v.msg for v in items], revision

    def watch_revocations(
        self, start_revision: int
    ) -> AsyncIterator[WatchEvent[kat_pb2.CertificateRevocation]]:
        return self.watch(REVOKED, kat_pb2.CertificateRevocation, start_revision)
