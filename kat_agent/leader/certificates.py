"""Renewal of leaf certificates on the leader (AgentAPI.RenewCertificate).

A renewal is a CSR for a new key, sent over mTLS with the certificate it replaces: the
leader issues the same common name, role and addresses as that certificate (never what
the CSR asks for), for the cluster's current lifetime. A node's renewal is accepted only
while that certificate is the node's current one (a removed node cannot renew); its new
certificate becomes the node's, the old one stays accepted until it is replaced."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2
from internal.core import certlife
from internal.security import pki, rpc
from kat_agent.leader.inventory import record_issued

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext

log = logging.getLogger(__name__)

# Roles a certificate may renew itself through the RPC (API certificates are renewed
# by their member, which holds the CA key).
RENEWABLE = (rpc.ROLE_NODE, rpc.ROLE_ADMIN)


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
    if lc.revocations.is_revoked(old_sha):
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the certificate of {info.common_name!r} is revoked; it cannot be renewed",
        )
    if info.role == rpc.ROLE_ADMIN:
        record = await lc.store.get_admin(info.common_name)
        if record is not None and record.msg.revoked:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"admin {info.common_name!r} is revoked; its certificate cannot be renewed",
            )
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
    if info.role == rpc.ROLE_ADMIN:
        # the person's record lists every certificate: `admin revoke` ends this one too
        from kat_agent.leader.admin_api import record_admin_certificate

        await record_admin_certificate(lc.store, info.common_name, cert, info.common_name)
    await record_issued(lc.store, cert, "renewal")
    log.info("renewed the %s certificate of %s", info.role, info.common_name)
    return kat_pb2.RenewCertificateResponse(certificate_pem=cert)
