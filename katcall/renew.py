"""Renewing the admin certificate of the context in use, when katcall is used past two
thirds of its life (the file keeps mode 0600)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from api.v1alpha1 import kat_pb2
from internal.core import certlife
from internal.security import clientconfig
from katcall.client import CallError, Client


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
