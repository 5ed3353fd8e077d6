from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.security import pki
from tests.helpers import PkiFiles, free_port


@pytest.fixture(scope="module")
def ca() -> pki.CertAndKey:
    return pki.create_ca("test-ca")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_certificate(ca: pki.CertAndKey) -> None:
    info = pki.cert_info(ca.cert_pem)
    assert info.is_ca
    assert info.common_name == "test-ca"
    assert info.dns_names == (pki.CA_SERVER_NAME,)
    assert info.not_after - info.not_before > dt.timedelta(days=3000)
    pki.verify_certificate(ca.cert_pem, ca.cert_pem)  # self-signed


@pytest.mark.parametrize(
    ("role", "server", "client"),
    [(pki.ROLE_ADMIN, False, True), (pki.ROLE_NODE, True, True), (pki.ROLE_ETCD, True, True)],
)
def test_roles_set_organization_and_usages(
    ca: pki.CertAndKey, role: str, server: bool, client: bool
) -> None:
    pair = pki.issue_certificate(ca.cert_pem, ca.key_pem, common_name="someone", role=role)
    info = pki.cert_info(pair.cert_pem)
    assert (info.common_name, info.role) == ("someone", role)
    assert (info.server_auth, info.client_auth) == (server, client)
    assert not info.is_ca
    assert pki.key_matches_certificate(pair.cert_pem, pair.key_pem)
    pki.verify_certificate(ca.cert_pem, pair.cert_pem)


def test_unknown_role_is_refused(ca: pki.CertAndKey) -> None:
    csr = pki.create_csr(pki.generate_private_key())
    with pytest.raises(pki.CertificateError, match="unknown role"):
        pki.sign_csr(ca.cert_pem, ca.key_pem, csr, common_name="x", role="kat:root")


def test_serving_certificate_sans(ca: pki.CertAndKey) -> None:
    pair = pki.issue_serving_certificate(
        ca.cert_pem, ca.key_pem, node_name="node-a", advertise_ip="10.1.2.3", extra_ips=["fd00::1"]
    )
    info = pki.cert_info(pair.cert_pem)
    assert info.dns_names == ("node-a", "localhost")
    assert info.ip_addresses == ("10.1.2.3", "127.0.0.1", "fd00::1")
    assert (info.common_name, info.role) == ("node-a", pki.ROLE_NODE)
    assert info.server_auth and info.client_auth


def test_signer_decides_subject_and_sans_not_the_csr(ca: pki.CertAndKey) -> None:
    key_pem = pki.generate_private_key()
    key = serialization.load_pem_private_key(key_pem, None)
    evil = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, pki.ROLE_ADMIN),
                    x509.NameAttribute(NameOID.COMMON_NAME, "root"),
                ]
            )
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = pki.sign_csr(
        ca.cert_pem,
        ca.key_pem,
        evil,
        common_name="node-7",
        role=pki.ROLE_NODE,
        dns_names=["node-7"],
        ip_addresses=["10.0.0.7"],
    )
    info = pki.cert_info(cert)
    assert pki.peer_identity(cert) == ("node-7", pki.ROLE_NODE)
    assert info.dns_names == ("node-7",)
    assert info.ip_addresses == ("10.0.0.7",)
    assert not info.is_ca
    # ...but the certificate is for the CSR's key, which stays with its owner.
    assert pki.key_matches_certificate(cert, key_pem)


def test_bad_csrs_are_refused(ca: pki.CertAndKey) -> None:
    with pytest.raises(ValueError, match="not a PEM certificate signing request"):
        pki.load_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
    csr = x509.load_pem_x509_csr(pki.create_csr(pki.generate_private_key(), "n"))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.CertificateError, match="signature"):
        pki.sign_csr(ca.cert_pem, ca.key_pem, tampered, common_name="n", role=pki.ROLE_NODE)


def test_ca_hash(ca: pki.CertAndKey) -> None:
    der = x509.load_pem_x509_certificate(ca.cert_pem).public_bytes(serialization.Encoding.DER)
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert pki.ca_hash(ca.cert_pem) == expected
    assert pki.ca_hash_matches(ca.cert_pem, expected)
    assert pki.ca_hash_matches(ca.cert_pem, expected.removeprefix("sha256:").upper())
    assert not pki.ca_hash_matches(pki.create_ca().cert_pem, expected)


def test_identity_from_certificate_and_auth_context(ca: pki.CertAndKey) -> None:
    admin = pki.issue_certificate(ca.cert_pem, ca.key_pem, common_name="alice", role=pki.ROLE_ADMIN)
    assert pki.peer_identity(admin.cert_pem) == ("alice", pki.ROLE_ADMIN)
    ctx = {"x509_pem_cert": [admin.cert_pem], "transport_security_type": [b"ssl"]}
    assert pki.identity_from_auth_context(ctx) == pki.PeerIdentity("alice", pki.ROLE_ADMIN)
    assert pki.identity_from_auth_context({"transport_security_type": [b"ssl"]}) is None
    assert pki.peer_identity(ca.cert_pem).role == ""


def test_certificate_from_another_ca_fails_verification(ca: pki.CertAndKey) -> None:
    other = pki.create_ca("other-ca")
    foreign = pki.issue_certificate(
        other.cert_pem, other.key_pem, common_name="node1", role=pki.ROLE_NODE
    )
    with pytest.raises(pki.CertificateError, match="not issued by this CA"):
        pki.verify_certificate(ca.cert_pem, foreign.cert_pem)
    pki.verify_certificate(other.cert_pem, foreign.cert_pem)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(pki.CertificateError, match="valid from"):
        pki.verify_certificate(other.cert_pem, foreign.cert_pem, at=later)
    with pytest.raises(pki.CertificateError, match="does not belong"):
        pki.sign_csr(
            ca.cert_pem,
            other.key_pem,
            pki.create_csr(pki.generate_private_key()),
            common_name="x",
            role=pki.ROLE_NODE,
        )


def test_key_files_are_private_and_certificates_public(tmp_path: Path, ca: pki.CertAndKey) -> None:
    old = os.umask(0)  # even a permissive umask must not widen the key's mode
    try:
        key_path, cert_path = tmp_path / "sub" / "a.key", tmp_path / "sub" / "a.crt"
        pki.write_pair(cert_path, key_path, ca)
        assert _mode(key_path) == 0o600
        assert _mode(cert_path) == 0o644
        pki.write_private_key(key_path, pki.generate_private_key())  # replacing keeps 0600
        assert _mode(key_path) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.crt", "a.key"]
    assert "redacted" in repr(ca) and b"PRIVATE" not in repr(ca).encode()


def test_ensure_ca_creates_once_then_resumes(tmp_path: Path) -> None:
    cert, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    first = pki.ensure_ca(cert, key)
    assert _mode(key) == 0o600
    assert pki.ensure_ca(cert, key) == first
    key.unlink()
    with pytest.raises(pki.CertificateError, match="without its pair"):
        pki.ensure_ca(cert, key)


class _Echo(kat_pb2_grpc.NodeAgentServicer):
    async def Status(  # noqa: N802 (gRPC method name)
        self, request: kat_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> kat_pb2.HeartbeatRequest:
        ident = pki.identity_from_auth_context(context.auth_context())
        assert ident is not None
        return kat_pb2.HeartbeatRequest(node_name=f"{ident.common_name}|{ident.role}")


async def test_mtls_handshake_identity_and_foreign_ca(pki_dir: PkiFiles) -> None:
    ca = pki_dir.ca_cert.read_bytes()
    server = grpc.aio.server()
    kat_pb2_grpc.add_NodeAgentServicer_to_server(_Echo(), server)
    creds = grpc.ssl_server_credentials(
        [(pki_dir.node_key.read_bytes(), pki_dir.node_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=True,
    )
    port = server.add_secure_port(f"127.0.0.1:{free_port()}", creds)
    await server.start()
    try:
        ok = grpc.ssl_channel_credentials(
            ca, pki_dir.admin_key.read_bytes(), pki_dir.admin_cert.read_bytes()
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", ok) as channel:
            reply = await kat_pb2_grpc.NodeAgentStub(channel).Status(kat_pb2.Empty(), timeout=5)
        assert reply.node_name == f"admin|{pki.ROLE_ADMIN}"

        other = pki.create_ca("intruder-ca")
        foreign = pki.issue_certificate(
            other.cert_pem, other.key_pem, common_name="admin", role=pki.ROLE_ADMIN
        )
        bad = grpc.ssl_channel_credentials(ca, foreign.key_pem, foreign.cert_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", bad) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await kat_pb2_grpc.NodeAgentStub(channel).Status(kat_pb2.Empty(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


async def test_join_port_serves_a_leaf_and_the_ca_is_pinned_from_its_chain(
    pki_dir: PkiFiles,
) -> None:
    from kat_agent import bootstrap

    ca = pki_dir.ca()
    served = bootstrap.issue_join_certificate(ca.cert_pem, ca.key_pem, "127.0.0.1")
    leaf = pki.cert_info(served.cert_pem)  # the first certificate of the chain
    assert not leaf.is_ca and leaf.server_auth and not leaf.client_auth
    assert leaf.role == pki.ROLE_JOIN and not pki.key_matches_certificate(
        ca.cert_pem, served.key_pem
    )
    server = grpc.aio.server()
    kat_pb2_grpc.add_NodeAgentServicer_to_server(_Echo(), server)
    creds = grpc.ssl_server_credentials([(served.key_pem, served.cert_pem)])
    port = server.add_secure_port(f"127.0.0.1:{free_port()}", creds)
    await server.start()
    try:
        pinned, name = await asyncio.to_thread(
            bootstrap.fetch_pinned_ca, "127.0.0.1", port, pki.ca_hash(ca.cert_pem)
        )
        assert pinned.strip() == ca.cert_pem.strip() and name == pki.JOIN_SERVER_NAME
        other = pki.create_ca("other")
        with pytest.raises(bootstrap.JoinError, match="does not match the token"):
            await asyncio.to_thread(
                bootstrap.fetch_pinned_ca, "127.0.0.1", port, pki.ca_hash(other.cert_pem)
            )
        client = grpc.ssl_channel_credentials(pinned)
        options = [("grpc.ssl_target_name_override", name)]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client, options=options) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await kat_pb2_grpc.NodeAgentStub(ch).Status(kat_pb2.Empty(), timeout=5)
        # TLS succeeded: the call reached the servicer, which wants a client certificate.
        assert err.value.code() == grpc.StatusCode.UNKNOWN
    finally:
        await server.stop(None)
