"""HTTPS certificates of ingress hosts on the leader.

ClusterAPI (admin): `SetIngressCertificate` checks an operator's certificate and key
(internal/security/ingress_certs.py) and stores them; `ListIngressCertificates` answers
without keys; `RemoveIngressCertificate` deletes (the host then gets a cluster-CA one).
AgentAPI (node certificates): `GetIngressCertificates` answers with keys, and only to a
node that is labelled kat.dws.rip/ingress=true now and calls with its current
certificate: the one way a key leaves the leader. A host without a stored certificate
gets one issued by the cluster CA, stored so that every leader serves the same one, and
re-issued when it nears its end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from api.v1alpha1 import kat_pb2
from internal.core.endpoints import INGRESS_LABEL
from internal.core.events import new_event
from internal.security import ingress_certs as ic
from internal.security.pki import CertificateError
from kat_agent.leader.context import LeaderContext
from kat_agent.leader.guards import admin

log = logging.getLogger(__name__)


class IngressCertsAPI:
    """The ClusterAPI half (mixed into ClusterAPI)."""

    lc: LeaderContext

    @admin
    async def SetIngressCertificate(
        self, request: kat_pb2.IngressCertificateRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.IngressCertificate:
        try:
            record = await asyncio.to_thread(
                ic.check_supplied, request.host, request.cert_pem, request.key_pem
            )
        except ic.IngressCertError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self.lc.store.put_ingress_cert(record)
        cert = ic.public(record)
        await self.lc.store.record_event(
            new_event(
                "IngressCertificateSet",
                f"certificate {cert.sha256[:16]} (until {cert.not_after.ToJsonString()})",
                kind="Ingress",
                name=cert.host,
            )
        )
        log.info("ingress certificate for %s set (%s)", cert.host, cert.sha256[:16])
        return cert

    @admin
    async def ListIngressCertificates(
        self, request: kat_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.IngressCertificateList:
        items = [ic.public(p) for p in await self.lc.store.list_ingress_certs()]
        return kat_pb2.IngressCertificateList(items=sorted(items, key=lambda c: c.host))

    @admin
    async def RemoveIngressCertificate(
        self, request: kat_pb2.IngressCertificateRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.Empty:
        try:
            host = ic.normalize_host(request.host)
        except ic.IngressCertError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not await self.lc.store.delete_ingress_cert(host):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no certificate stored for {host}")
        log.info("ingress certificate for %s removed", host)
        return kat_pb2.Empty()


async def certificates_for_node(
    lc: LeaderContext,
    cn: str,
    request: kat_pb2.IngressCertificatesRequest,
    context: grpc.aio.ServicerContext,
    require_current_node: Callable[[], Awaitable[None]],
) -> kat_pb2.IngressKeyPairList:
    """The AgentAPI half: certificates with keys for an ingress node's tls hosts."""
    await require_current_node()
    node = lc.registry.get(cn)
    if node is None or node.metadata.labels.get(INGRESS_LABEL, "") != "true":
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"node {cn!r} is not labelled {INGRESS_LABEL}=true: no ingress keys for it",
        )
    if len(request.hosts) > ic.MAX_HOSTS:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"at most {ic.MAX_HOSTS} hosts per call"
        )
    try:
        hosts = sorted({ic.normalize_host(h) for h in request.hosts})
    except ic.IngressCertError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    out = kat_pb2.IngressKeyPairList()
    for host in hosts:
        cert = await lc.store.get_ingress_cert(host)
        if cert is None or (cert.certificate.source == "cluster-ca" and ic.needs_renewal(cert)):
            if lc.ca_key is None:
                continue  # this member cannot sign; the host stays on plain HTTP
            try:
                cert = await asyncio.to_thread(ic.issue, lc.ca_cert, lc.ca_key, host)
            except CertificateError as exc:
                log.error("cannot issue an ingress certificate for %s: %s", host, exc)
                continue
            await lc.store.put_ingress_cert(cert)
            log.info("ingress certificate for %s issued by the cluster CA", host)
            await _record(lc, ic.leaf_pem(cert.certificate.cert_pem))
        out.items.append(cert)
    return out


async def _record(lc: LeaderContext, cert_pem: bytes) -> None:
    """In the certificate inventory (`katcall get certificates`), as every leaf the
    cluster CA issues."""
    from kat_agent.leader.inventory import record_issued

    try:
        await record_issued(lc.store, cert_pem, "ingress")
    except Exception as exc:  # noqa: BLE001 - the certificate works without its record
        log.warning("ingress certificate not recorded in the inventory: %s", exc)
