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
from internal.security import pki, rpc, sealing

log = logging.getLogger(__name__)

# The join port serves a leaf certificate (role kat:join) followed by the CA
# certificate: a joining agent finds the CA in that chain by the token's hash, then
# talks to the port verifying the leaf against that CA under this name.
JOIN_SERVER_NAME = pki.JOIN_SERVER_NAME


class JoinError(Exception):
    pass


def ensure_cluster_pki(dd: DataDir) -> pki.CertAndKey:
    """The cluster CA and etcd's own CA (created once, then reused)."""
    ensure_etcd_ca(dd)
    return pki.ensure_ca(dd.ca_cert, dd.ca_key, "kat-ca")


def ensure_etcd_ca(dd: DataDir) -> pki.CertAndKey:
    return pki.ensure_ca(dd.etcd_pki / "ca.crt", dd.etcd_pki / "ca.key", "kat-etcd-ca")


_CA_KEY = "cluster CA key"
_ETCD_CA_KEY = "etcd CA key"


def ca_material(dd: DataDir) -> kat_pb2.CAMaterial:
    """The CA material of this data dir, to replicate to members through etcd: the
    certificates in the clear, the keys sealed with the cluster secret (made here at
    init), so that reading etcd or a snapshot alone does not give the CA."""
    secret = sealing.ensure_secret(dd.cluster_secret)
    return seal_material(
        secret,
        ca_cert_pem=dd.ca_cert.read_bytes(),
        ca_key_pem=dd.ca_key.read_bytes(),
        etcd_ca_cert_pem=(dd.etcd_pki / "ca.crt").read_bytes(),
        etcd_ca_key_pem=(dd.etcd_pki / "ca.key").read_bytes(),
    )


def seal_material(
    secret: bytes,
    *,
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    etcd_ca_cert_pem: bytes,
    etcd_ca_key_pem: bytes,
) -> kat_pb2.CAMaterial:
    return kat_pb2.CAMaterial(
        ca_cert_pem=ca_cert_pem,
        etcd_ca_cert_pem=etcd_ca_cert_pem,
        sealed_ca_key=sealing.seal(secret, ca_key_pem, _CA_KEY),
        sealed_etcd_ca_key=sealing.seal(secret, etcd_ca_key_pem, _ETCD_CA_KEY),
        secret_id=sealing.secret_id(secret),
    )


def open_material(material: kat_pb2.CAMaterial, secret: bytes | None) -> tuple[bytes, bytes]:
    """(cluster CA key, etcd CA key) of stored material; SecretError without the right
    secret. Material from before sealing (keys in the clear) opens without one."""
    if not material.sealed_ca_key:
        return material.ca_key_pem, material.etcd_ca_key_pem
    if secret is None:
        raise sealing.SecretError("the CA keys in etcd are sealed; the cluster secret is needed")
    if material.secret_id and material.secret_id != sealing.secret_id(secret):
        raise sealing.SecretError(
            f"the CA keys were sealed with cluster secret {material.secret_id}, not with "
            f"{sealing.secret_id(secret)} (wrong secret for this cluster?)"
        )
    return (
        sealing.unseal(secret, material.sealed_ca_key, _CA_KEY),
        sealing.unseal(secret, material.sealed_etcd_ca_key, _ETCD_CA_KEY),
    )


def write_ca_material(
    dd: DataDir, material: kat_pb2.CAMaterial, secret: bytes | None, *, etcd: bool = True
) -> None:
    """Install replicated CA material (a member that may lead needs the keys)."""
    ca_key, etcd_key = open_material(material, secret)
    pki.write_certificate(dd.ca_cert, material.ca_cert_pem)
    pki.write_private_key(dd.ca_key, ca_key)
    if etcd:
        pki.write_certificate(dd.etcd_pki / "ca.crt", material.etcd_ca_cert_pem)
        pki.write_private_key(dd.etcd_pki / "ca.key", etcd_key)


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


def issue_join_certificate(ca_cert_pem: bytes, ca_key_pem: bytes, advertise: str) -> pki.CertAndKey:
    """The join port's serving identity: a new key (in memory only) and a kat:join
    certificate, with the CA certificate after it so that a joining agent can pin it."""
    pair = pki.issue_certificate(
        ca_cert_pem,
        ca_key_pem,
        common_name=JOIN_SERVER_NAME,
        role=pki.ROLE_JOIN,
        dns_names=[JOIN_SERVER_NAME],
        ip_addresses=[advertise],
    )
    return pki.CertAndKey(pair.cert_pem + ca_cert_pem, pair.key_pem)


def _presented_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """PEM of every certificate the server sent (unverified: the hash check decides).
    Public in Python 3.13, private (but present) in 3.11."""
    get = getattr(tls, "get_unverified_chain", None) or tls._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    chain = get() or []
    return [c.public_bytes(ssl._ssl.ENCODING_PEM).encode() for c in chain]  # type: ignore[attr-defined]


def fetch_pinned_ca(
    host: str, port: int, expected_hash: str, timeout: float = 10.0
) -> tuple[bytes, str]:
    """The leader's CA certificate, accepted only if it matches the token's hash, and
    the TLS name to check the join port's certificate under."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Verification happens below, against the pinned hash, not a trust store.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=JOIN_SERVER_NAME) as tls:
                chain = _presented_chain(tls)
    except OSError as exc:
        raise JoinError(f"cannot reach the leader's join port {host}:{port}: {exc}") from None
    if not chain:
        raise JoinError(f"the leader at {host}:{port} presented no certificate")
    for i, pem in enumerate(chain):
        try:
            if pki.ca_hash_matches(pem, expected_hash):
                # chain[0] is the CA itself only on a leader from before kat:join
                return pem, pki.CA_SERVER_NAME if i == 0 else JOIN_SERVER_NAME
        except pki.CertificateError:
            continue
    raise JoinError(
        f"the leader at {host}:{port} presented a CA that does not match the token's "
        f"(sha256:{expected_hash}); refusing to trust it"
    )


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
    ca_pem, server_name = await asyncio.to_thread(
        fetch_pinned_ca, host, parsed.join_port, parsed.ca_hash
    )
    key = pki.generate_private_key()
    request.token = parsed.credential
    request.csr_pem = pki.create_csr(key)
    creds = rpc.client_credentials(ca_pem)
    # gRPC verifies the join port's certificate against the pinned CA.
    options = [("grpc.ssl_target_name_override", server_name)]
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
