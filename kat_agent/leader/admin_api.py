"""ClusterAPI's per-person admins: `katcall admin create|revoke|list`.

katcall makes the key and a CSR where it will be used; the leader signs a kat:admin
certificate naming the person (the audit trail then names them), or with role
`monitoring` a kat:monitoring one that reads /metrics and nothing else (for a
Prometheus server: `katcall admin create prometheus --role monitoring`), and keeps an
AdminRecord with the hash of every certificate it issued to that name. Revoking writes
those hashes to /kat/pki/revoked/, which every member follows with a watch and checks
on every call (kat_agent/leader/revocation.py): a revoked admin's next call, also on
a connection already open, is PERMISSION_DENIED."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2
from internal.core import certlife
from internal.security import pki, rpc
from internal.state.kv import AlreadyExists, StaleWrite
from internal.state.store import Store
from kat_agent.leader.guards import admin, caller

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext

# A person's name as it appears in certificates and the audit trail.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_Ctx = grpc.aio.ServicerContext


def admin_name_problem(name: str) -> str:
    if not _NAME.match(name):
        return (
            f"admin name {name[:70]!r} must be 1-63 lower-case letters, digits, '.', '_' or "
            "'-', starting and ending with a letter or digit"
        )
    return ""


def role_of(requested: str) -> str | None:
    """The certificate role for CreateAdminRequest.role ("" is admin); None if unknown."""
    return rpc.CLIENT_ROLES.get(requested or "admin")


def new_admin_record(
    name: str,
    cert_pem: bytes,
    created_by: str,
    previous: kat_pb2.AdminRecord | None = None,
    role: str = pki.ROLE_ADMIN,
) -> kat_pb2.AdminRecord:
    """The record of `name` holding the certificate just issued (a revoked name starts
    over: its old certificates stay revoked by hash)."""
    rec = kat_pb2.AdminRecord(name=name, created_by=created_by, role=role)
    if previous is not None and not previous.revoked:
        rec.CopyFrom(previous)
    else:
        rec.created.FromDatetime(datetime.now(UTC))
    rec.certificate_sha256.append(rpc.certificate_sha256(cert_pem))
    rec.not_after.FromDatetime(pki.cert_info(cert_pem).not_after)
    return rec


async def record_admin_certificate(
    store: Store, name: str, cert_pem: bytes, by: str, role: str = pki.ROLE_ADMIN
) -> None:
    """Add a certificate issued outside the API (init's admin config, `kat-agent
    certificate`) to `name`'s record."""
    for _ in range(5):
        current = await store.get_admin(name)
        rec = new_admin_record(name, cert_pem, by, current.msg if current else None, role)
        try:
            await store.put_admin(rec, current.mod_revision if current else None)
            return
        except (AlreadyExists, StaleWrite):
            continue


class AdminAPI:
    lc: LeaderContext

    @admin
    async def CreateAdmin(
        self, request: kat_pb2.CreateAdminRequest, context: _Ctx
    ) -> kat_pb2.CreateAdminResponse:
        lc = self.lc
        problem = admin_name_problem(request.name)
        role = role_of(request.role)
        if role is None:
            known = " or ".join(rpc.CLIENT_ROLES)
            problem = f"unknown role {request.role[:40]!r} (expected {known})"
        if not problem:
            try:
                pki.load_csr(request.csr_pem)
            except ValueError as exc:
                problem = f"bad CSR: {exc}"
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if lc.ca_key is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this leader cannot sign")
        assert lc.ca_key is not None
        current = await lc.store.get_admin(request.name)
        if current is not None and not current.msg.revoked:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"admin {request.name!r} exists; revoke it first, or choose another name",
            )
        cert = pki.sign_csr(
            lc.ca_cert,
            lc.ca_key,
            request.csr_pem,
            common_name=request.name,
            role=role or "",
            lifetime=certlife.lifetime(lc.spec),
        )
        rec = new_admin_record(request.name, cert, caller(context), role=role or "")
        try:
            await lc.store.put_admin(rec, current.mod_revision if current else None)
        except (AlreadyExists, StaleWrite):
            await context.abort(
                grpc.StatusCode.ABORTED, f"admin {request.name!r} changed concurrently; retry"
            )
        from kat_agent.leader.inventory import record_issued

        await record_issued(lc.store, cert, f"admin create by {caller(context)}")
        return kat_pb2.CreateAdminResponse(
            certificate_pem=cert, ca_pem=lc.ca_cert, api_endpoints=lc.api_endpoints(), admin=rec
        )

    @admin
    async def RevokeAdmin(
        self, request: kat_pb2.AdminRequest, context: _Ctx
    ) -> kat_pb2.AdminRecord:
        lc = self.lc
        who = caller(context)
        if request.name == who:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{who!r} cannot revoke itself; revoke it with another admin's config",
            )
        for _ in range(5):
            current = await lc.store.get_admin(request.name)
            if current is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"admin {request.name!r} not found")
            assert current is not None
            rec = current.msg
            if rec.revoked:
                return rec
            rec.revoked, rec.revoked_by = True, who
            rec.revoked_at.FromDatetime(datetime.now(UTC))
            fresh = [d for d in rec.certificate_sha256 if not lc.revocations.is_revoked(d)]
            revocations = [
                kat_pb2.CertificateRevocation(
                    certificate_sha256=d,
                    common_name=rec.name,
                    role=rec.role or pki.ROLE_ADMIN,
                    revoked_at=rec.revoked_at,
                    revoked_by=who,
                )
                for d in fresh
            ]
            try:
                await lc.store.revoke_admin(rec, current.mod_revision, revocations)
            except (AlreadyExists, StaleWrite):
                continue
            for d in fresh:
                lc.revocations.add(d)
            return rec
        await context.abort(grpc.StatusCode.ABORTED, "admin changed concurrently; retry")
        raise AssertionError("unreachable")

    @admin
    async def ListAdmins(self, request: kat_pb2.ListRequest, context: _Ctx) -> kat_pb2.AdminList:
        return kat_pb2.AdminList(items=await self.lc.store.list_admins())
