"""`kat-agent certificate NAME --role monitoring`: a client certificate signed by the
cluster CA, made on a node that holds the CA key (an etcd member).

This is how a Prometheus server gets the certificate it scrapes /metrics with:
role `monitoring` can read every agent's metrics and call no gRPC service (the
cluster API wants `kat:admin`, the agent API `kat:node`). The key is made here
and written 0600; nothing is sent anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from internal.host.datadir import DataDir
from internal.security import pki

ROLES = {"monitoring": pki.ROLE_MONITORING, "admin": pki.ROLE_ADMIN}


class CredentialError(Exception):
    pass


def issue_client_certificate(data_dir: Path, name: str, role: str, out_dir: Path) -> list[Path]:
    """Write ca.crt, NAME.crt and NAME.key (0600) into out_dir; returns the paths."""
    if role not in ROLES:
        raise CredentialError(f"unknown role {role!r} (expected {' or '.join(ROLES)})")
    if not name or "/" in name or name.startswith("."):
        raise CredentialError(f"{name!r} is not a usable certificate name")
    dd = DataDir(data_dir)
    if not dd.ca_key.exists():
        raise CredentialError(
            f"{dd.ca_key} not found: run this on an etcd member of the cluster (it holds the CA)"
        )
    ca = pki.read_pair(dd.ca_cert, dd.ca_key)
    pair = pki.issue_certificate(ca.cert_pem, ca.key_pem, common_name=name, role=ROLES[role])
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    cert, key, ca_path = out_dir / f"{name}.crt", out_dir / f"{name}.key", out_dir / "ca.crt"
    pki.write_pair(cert, key, pair)
    pki.write_certificate(ca_path, ca.cert_pem)
    return [ca_path, cert, key]
