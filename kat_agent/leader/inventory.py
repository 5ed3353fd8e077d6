"""The inventory of issued leaf certificates (`katcall get certificates`): one record per
serial in etcd, written by whoever signs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from api.v1alpha1 import kat_pb2
from internal.security import pki, rpc
from internal.state.store import Store

log = logging.getLogger(__name__)


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


async def list_certificates(store: Store) -> kat_pb2.CertificateList:
    now = datetime.now(UTC).timestamp()
    items = [c for c in await store.list_issued_certificates() if c.not_after.seconds >= now]
    items.sort(key=lambda c: (c.role, c.common_name, c.not_after.seconds))
    return kat_pb2.CertificateList(items=items)
