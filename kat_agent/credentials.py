"""`kat-agent certificate NAME --role monitoring`: a client certificate signed by the
cluster CA, made on a node that holds the CA key (an etcd member).

This is how a Prometheus server gets the certificate it scrapes /metrics with:
role `monitoring` can read every agent's metrics and call no gRPC service (the
cluster API wants `kat:admin`, the agent API `kat:node`). The key is made here
and written 0600 and never sent anywhere. The certificate is recorded in the cluster
first, through this member's etcd (the member must be running): in NAME's admin
record, so that `katcall admin revoke NAME` ends it, and in the certificate
inventory (`katcall get certificates`). Nothing is written when that fails.
"""

from __future__ import annotations

import os
from pathlib import Path

from internal.host.datadir import DataDir, NodeIdentity
from internal.security import pki, rpc

ROLES = rpc.CLIENT_ROLES


class CredentialError(Exception):
    pass


def client_certificate(data_dir: Path, name: str, role: str) -> tuple[pki.CertAndKey, bytes]:
    """A new key and certificate for NAME, and the CA certificate (CredentialError)."""
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
    return pair, ca.cert_pem


def write_client_certificate(
    out_dir: Path, name: str, pair: pki.CertAndKey, ca_pem: bytes
) -> list[Path]:
    """Write ca.crt, NAME.crt and NAME.key (0600) into out_dir; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    cert, key, ca_path = out_dir / f"{name}.crt", out_dir / f"{name}.key", out_dir / "ca.crt"
    pki.write_pair(cert, key, pair)
    pki.write_certificate(ca_path, ca_pem)
    return [ca_path, cert, key]


def issue_client_certificate(data_dir: Path, name: str, role: str, out_dir: Path) -> list[Path]:
    """Issue and write, without recording (see `record_client_certificate`)."""
    pair, ca_pem = client_certificate(data_dir, name, role)
    return write_client_certificate(out_dir, name, pair, ca_pem)


async def record_client_certificate(data_dir: Path, name: str, role: str, cert_pem: bytes) -> None:
    """Record the certificate in NAME's admin record and the inventory, through this
    member's own etcd (CredentialError if it cannot be reached or NAME has another role)."""
    from internal.state.etcd import EtcdClient
    from internal.state.etcd_values import EtcdError
    from internal.state.store import Store
    from kat_agent.daemon import load_local_config
    from kat_agent.leader.admin_api import record_admin_certificate
    from kat_agent.leader.inventory import record_issued

    dd = DataDir(data_dir)
    p = dd.etcd_pki
    try:
        port = load_local_config(dd).spec.etcd_client_port
        identity = NodeIdentity.load(dd.identity_file)
        # etcd listens on the advertise address and on 127.0.0.1 (of the member's host).
        hosts = dict.fromkeys([identity.advertise_address if identity else "", "127.0.0.1"])
        client = EtcdClient(
            [f"{h}:{port}" for h in hosts if h],
            ca_file=p / "ca.crt",
            cert_file=p / "client.crt",
            key_file=p / "client.key",
        )
    except OSError as exc:
        raise CredentialError(f"{dd.root} holds no etcd member configuration: {exc}") from None
    try:
        store = Store(client)
        current = await store.get_admin(name)
        if current is not None and not current.msg.revoked and current.msg.role != ROLES[role]:
            raise CredentialError(
                f"{name!r} is a {current.msg.role} certificate holder already; "
                "revoke it first, or choose another name"
            )
        by = "kat-agent certificate"
        await record_admin_certificate(store, name, cert_pem, by, role=ROLES[role])
        await record_issued(store, cert_pem, by)
    except EtcdError as exc:
        raise CredentialError(
            f"cannot record the certificate in the cluster (is this member running?): {exc}"
        ) from None
    finally:
        await client.close()
