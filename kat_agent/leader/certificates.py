"""Leaf certificates on the leader: the inventory in etcd (`katcall get certificates`)
and renewal (AgentAPI.RenewCertificate).

A renewal is a CSR for a new key, sent over mTLS with the certificate it replaces: the
leader issues the same common name, role and addresses as that certificate (never what
the CSR asks for), for the cluster's current lifetime. A node's renewal is accepted only
while that certificate is the node's current one (a removed node cannot renew); its new
certificate becomes the node's, the old one stays accepted until it is replaced."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2
from internal.core import certlife
from internal.security import pki, rpc
from internal.state.store import Store

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext

log = logging.getLogger(__name__)

# Roles a certificate may renew itself through the RPC (API certificates are renewed
# by their member, which holds the CA key).
RENEWABLE = (rpc.ROLE_NODE, rpc.ROLE_ADMIN)


def issued_record(cert_pem: bytes, reason: str) -> kat_pb2.IssuedCertificate:
    info = pki.cert_info(cert_pem)
    rec = kat_pb2.IssuedCertificate(
        serial=info.serial,
        common_name=info.common_name,
        role=info.role,
        dns_names=list(info.dns_names),
        ip_addresses=list(info.ip_addresses),
        reason=reason,
        sha256=rpc.certificate_sha256(cert_pem),
    )
    rec.not_before.FromDatetime(info.not_before)
    rec.not_after.FromDatetime(info.not_after)
    return rec


async def record_issued(store: Store, cert_pem: bytes, reason: str) -> None:
    """Add a certificate to the inventory, and forget the expired ones."""
    await store.record_issued_certificate(issued_record(cert_pem, reason))
    try:
        await store.prune_issued_certificates(datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - pruning is best effort, the record is in
        log.warning("pruning expired certificates from the inventory failed: %s", exc)


async def renew(
    lc: LeaderContext, request: kat_pb2.RenewCertificateRequest, context: grpc.aio.ServicerContext
) -> kat_pb2.RenewCertificateResponse:
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    current = pems[0]
    info = pki.cert_info(current)
    if info.role not in RENEWABLE:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"certificates of role {info.role or 'none'!r} are not renewed by this call",
        )
    await lc.require_leader(context)
    if lc.ca_key is None:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this leader cannot sign")
    old_sha = rpc.certificate_sha256(current)
    if info.role == rpc.ROLE_NODE:
        bound = lc.registry.bound_certificate(info.common_name)
        if bound is None or (
            bound and old_sha not in (bound, lc.registry.previous_certificate(info.common_name))
        ):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of {info.common_name!r} is revoked (the node was removed "
                "or re-joined); it cannot be renewed",
            )
    try:
        pki.load_csr(request.csr_pem)
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad CSR: {exc}")
    assert lc.ca_key is not None
    cert = pki.sign_csr(
        lc.ca_cert,
        lc.ca_key,
        request.csr_pem,
        common_name=info.common_name,
        role=info.role,
        dns_names=info.dns_names,
        ip_addresses=info.ip_addresses,
        lifetime=certlife.lifetime(lc.spec),
    )
    if info.role == rpc.ROLE_NODE:
        new_sha = rpc.certificate_sha256(cert)

        def rebind(node: kat_pb2.Node) -> None:
            node.status.previous_certificate_sha256 = old_sha
            node.status.certificate_sha256 = new_sha

        if await lc.registry.mutate(info.common_name, rebind) is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {info.common_name!r} is not in the cluster",
            )
    await record_issued(lc.store, cert, "renewal")
    log.info("renewed the %s certificate of %s", info.role, info.common_name)
    return kat_pb2.RenewCertificateResponse(certificate_pem=cert)


async def list_certificates(store: Store) -> kat_pb2.CertificateList:
    now = datetime.now(UTC).timestamp()
    items = [c for c in await store.list_issued_certificates() if c.not_after.seconds >= now]
    items.sort(key=lambda c: (c.role, c.common_name, c.not_after.seconds))
    return kat_pb2.CertificateList(items=items)
