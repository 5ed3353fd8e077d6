"""Creating a node's credentials: the cluster PKI at init, and the join
handshake (CA pinning, CSR) on other nodes."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.core import tokens
from internal.host.datadir import DataDir
from internal.security import pki, rpc

log = logging.getLogger(__name__)

# The join port serves the CA certificate itself, so that a joining agent can
# check it against the token's hash before trusting anything; the CA carries
# this DNS name for the TLS name check.
CA_SERVER_NAME = pki.CA_SERVER_NAME


class JoinError(Exception):
    pass


def ensure_cluster_pki(dd: DataDir) -> pki.CertAndKey:
    """The cluster CA and etcd's own CA (created once, then reused)."""
    ensure_etcd_ca(dd)
    return pki.ensure_ca(dd.ca_cert, dd.ca_key, "kat-ca")


def ensure_etcd_ca(dd: DataDir) -> pki.CertAndKey:
    return pki.ensure_ca(dd.etcd_pki / "ca.crt", dd.etcd_pki / "ca.key", "kat-etcd-ca")


def ca_material(dd: DataDir) -> kat_pb2.CAMaterial:
    """The CA material of this data dir, to replicate to members through etcd."""
    return kat_pb2.CAMaterial(
        ca_cert_pem=dd.ca_cert.read_bytes(),
        ca_key_pem=dd.ca_key.read_bytes(),
        etcd_ca_cert_pem=(dd.etcd_pki / "ca.crt").read_bytes(),
        etcd_ca_key_pem=(dd.etcd_pki / "ca.key").read_bytes(),
    )


def write_ca_material(dd: DataDir, material: kat_pb2.CAMaterial, *, etcd: bool = True) -> None:
    """Install replicated CA material (a member that may lead needs the keys)."""
    pki.write_certificate(dd.ca_cert, material.ca_cert_pem)
    pki.write_private_key(dd.ca_key, material.ca_key_pem)
    if etcd:
        pki.write_certificate(dd.etcd_pki / "ca.crt", material.etcd_ca_cert_pem)
        pki.write_private_key(dd.etcd_pki / "ca.key", material.etcd_ca_key_pem)


def ensure_etcd_certs(dd: DataDir, node_name: str, advertise: str) -> None:
    """etcd's serving/peer certificate and the local agent's etcd client
    certificate, both from etcd's CA (node certificates cannot reach etcd)."""
    ca = pki.read_pair(dd.etcd_pki / "ca.crt", dd.etcd_pki / "ca.key")
    server = dd.etcd_pki / "server.crt"
    if not server.exists():
        pair = pki.issue_serving_certificate(
            ca.cert_pem, ca.key_pem, node_name=node_name, advertise_ip=advertise, role=pki.ROLE_ETCD
        )
        pki.write_pair(server, dd.etcd_pki / "server.key", pair)
    client = dd.etcd_pki / "client.crt"
    if not client.exists():
        pair = pki.issue_certificate(
            ca.cert_pem, ca.key_pem, common_name=f"kat-agent-{node_name}", role=pki.ROLE_ETCD
        )
        pki.write_pair(client, dd.etcd_pki / "client.key", pair)


def issue_node_certificate(
    dd: DataDir,
    ca: pki.CertAndKey,
    node_name: str,
    advertise: str,
    *,
    lifetime: dt.timedelta | None = None,
) -> bytes:
    """The init node's own identity; its key is made here, where it is used. Returns
    the certificate."""
    key = pki.generate_private_key()
    dns, ips = pki.serving_sans(node_name, advertise)
    cert = pki.sign_csr(
        ca.cert_pem,
        ca.key_pem,
        pki.create_csr(key),
        common_name=node_name,
        role=pki.ROLE_NODE,
        dns_names=dns,
        ip_addresses=ips,
        lifetime=lifetime,
    )
    pki.write_private_key(dd.node_key, key)
    pki.write_certificate(dd.node_cert, cert)
    return cert


def issue_admin_certificate(
    ca: pki.CertAndKey, name: str = "admin", *, lifetime: dt.timedelta | None = None
) -> pki.CertAndKey:
    return pki.issue_certificate(
        ca.cert_pem, ca.key_pem, common_name=name, role=pki.ROLE_ADMIN, lifetime=lifetime
    )


def fetch_pinned_ca(host: str, port: int, expected_hash: str, timeout: float = 10.0) -> bytes:
    """The leader's CA certificate, accepted only if it matches the token's hash."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Verification happens below, against the pinned hash, not a trust store.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=CA_SERVER_NAME) as tls:
                der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise JoinError(f"cannot reach the leader's join port {host}:{port}: {exc}") from None
    if not der:
        raise JoinError(f"the leader at {host}:{port} presented no certificate")
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    if not pki.ca_hash_matches(pem, expected_hash):
        raise JoinError(
            f"the leader at {host}:{port} presented a CA ({pki.ca_hash(pem)}) that does not "
            f"match the token's (sha256:{expected_hash}); refusing to trust it"
        )
    return pem


async def join_cluster(
    dd: DataDir,
    leader: str,
    token: str,
    request: kat_pb2.JoinRequest,
) -> kat_pb2.JoinResponse:
    """Pin the CA, send a CSR with a key made here, store the signed identity."""
    try:
        parsed = tokens.parse(token)
    except tokens.TokenError as exc:
        raise JoinError(str(exc)) from None
    host = leader.rsplit(":", 1)[0] if ":" in leader else leader
    host = host.strip("[]")
    ca_pem = await asyncio.to_thread(fetch_pinned_ca, host, parsed.join_port, parsed.ca_hash)
    key = pki.generate_private_key()
    request.token = parsed.credential
    request.csr_pem = pki.create_csr(key)
    creds = rpc.client_credentials(ca_pem)
    options = [("grpc.ssl_target_name_override", CA_SERVER_NAME)]
    async with grpc.aio.secure_channel(f"{host}:{parsed.join_port}", creds, options=options) as ch:
        try:
            resp: kat_pb2.JoinResponse = await kat_pb2_grpc.AgentAPIStub(ch).Join(
                request, timeout=30
            )
        except grpc.RpcError as err:
            raise JoinError(f"join refused by {host}:{parsed.join_port}: {err.details()}") from None  # type: ignore[attr-defined]
    if resp.ca_pem.strip() != ca_pem.strip():
        raise JoinError("the leader answered with a different CA than it presented")
    pki.write_certificate(dd.ca_cert, resp.ca_pem)
    pki.write_private_key(dd.node_key, key)
    pki.write_certificate(dd.node_cert, resp.certificate_pem)
    return resp
