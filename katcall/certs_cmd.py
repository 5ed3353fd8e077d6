"""`katcall get certificates` (the inventory of issued leaf certificates, with expiry),
and renewing the admin certificate of the context in use when it is due."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.v1alpha1 import kat_pb2
from internal.core import certlife
from internal.security import clientconfig
from katcall import output
from katcall.client import CallError, Client
from katcall.get_cmd import Resource, register_resource


def _list(client: Client, args: argparse.Namespace, _sel: dict[str, str]) -> list[Any]:
    return list(client.list_certificates(kat_pb2.ListRequest()).items)


def _headers(wide: bool, _ns: bool) -> list[str]:
    cols = ["IDENTITY", "ROLE", "SERIAL", "NOT-AFTER", "LEFT"]
    return cols + (["ADDRESSES", "REASON"] if wide else [])


def _row(c: Any, wide: bool, _ns: bool) -> list[str]:
    left = c.not_after.seconds - time.time()
    row = [
        c.common_name,
        c.role,
        c.serial,
        c.not_after.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ"),
        output.age(left) if left > 0 else "expired",
    ]
    return row + ([",".join(c.ip_addresses) or "-", c.reason] if wide else [])


def renew_if_due(client: Client, path: Path, now: datetime | None = None) -> bool:
    """Renew the context's admin certificate past two thirds of its life (saved to the
    config file, 0600); True if renewed. Failures only warn: the old one still works."""
    from internal.security import pki

    ctx = client.ctx
    try:
        info = pki.cert_info(ctx.cert)
    except pki.CertificateError:
        return False
    if not certlife.renewal_due(now or datetime.now(UTC), info.not_before, info.not_after):
        return False
    key = pki.generate_private_key()
    try:
        resp = client.renew_certificate(
            kat_pb2.RenewCertificateRequest(csr_pem=pki.create_csr(key))
        )
        cert = resp.certificate_pem
        pki.verify_certificate(ctx.ca, cert)
        if not pki.key_matches_certificate(cert, key):
            raise pki.CertificateError("the certificate is not for the key sent")
    except (CallError, pki.CertificateError) as exc:
        print(f"katcall: renewing the client certificate failed: {exc}", file=sys.stderr)
        return False
    fresh = clientconfig.load(path)
    if ctx.name in fresh.contexts:
        fresh.contexts[ctx.name].cert, fresh.contexts[ctx.name].key = cert, key
        clientconfig.save(fresh, path)
    client.use_certificate(cert, key)
    return True


def register(sub: argparse._SubParsersAction) -> None:
    # `get certificates` is a resource of `katcall get`.
    register_resource(
        Resource(
            "certificates",
            "certificate",
            _list,
            _headers,
            _row,
            key=lambda c: c.serial,
            name_of=lambda c: c.serial,
        ),
        "certs",
        "certificate",
    )
