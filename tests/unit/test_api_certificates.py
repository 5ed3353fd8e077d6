"""The API server's own certificate (kat:api, checked by name by every client), and
certificates served from files that are renewed under a running server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.security import clientconfig, pki, rpc
from internal.security.certfiles import KeyPairFile
from katcall.client import CallError, Client
from tests.helpers import free_port


class _Info(kat_pb2_grpc.ClusterAPIServicer):
    async def GetClusterInfo(  # noqa: N802 (gRPC method name)
        self, request: kat_pb2.ClusterInfoRequest, context: grpc.aio.ServicerContext
    ) -> kat_pb2.ClusterInfo:
        return kat_pb2.ClusterInfo(leader_node="real-api")


@pytest.fixture(scope="module")
def ca() -> pki.CertAndKey:
    return pki.create_ca()


def _node(ca: pki.CertAndKey) -> pki.CertAndKey:
    # what a joined node holds: its name, localhost, its IP and 127.0.0.1
    return pki.issue_serving_certificate(
        ca.cert_pem, ca.key_pem, node_name="evil", advertise_ip="127.0.0.1"
    )


def _api(ca: pki.CertAndKey, lifetime: dt.timedelta | None = None) -> pki.CertAndKey:
    dns, ips = pki.serving_sans("m1", "127.0.0.1", extra_dns=[rpc.API_SERVER_NAME])
    return pki.issue_certificate(
        ca.cert_pem,
        ca.key_pem,
        common_name="m1",
        role=rpc.ROLE_API,
        dns_names=dns,
        ip_addresses=ips,
        lifetime=lifetime,
    )


@contextlib.asynccontextmanager
async def served(ca: pki.CertAndKey, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A ClusterAPI on loopback serving whatever pair is in tmp_path/srv.{crt,key}."""
    cert, key = tmp_path / "srv.crt", tmp_path / "srv.key"
    pki.write_pair(cert, key, _node(ca))
    server = grpc.aio.server()
    kat_pb2_grpc.add_ClusterAPIServicer_to_server(_Info(), server)
    port = server.add_secure_port(
        f"127.0.0.1:{free_port()}", KeyPairFile(cert, key).server_credentials(ca.cert_pem)
    )
    await server.start()
    try:
        yield f"127.0.0.1:{port}", tmp_path
    finally:
        await server.stop(None)


def _admin_client(ca: pki.CertAndKey, endpoint: str) -> Client:
    admin = pki.issue_certificate(ca.cert_pem, ca.key_pem, common_name="admin", role="kat:admin")
    ctx = clientconfig.Context("t", [endpoint], ca.cert_pem, admin.cert_pem, admin.key_pem)
    return Client(ctx, request_timeout=5)


def test_only_api_certificates_carry_the_api_name(ca: pki.CertAndKey) -> None:
    with pytest.raises(pki.CertificateError, match="only kat:api"):
        pki.issue_certificate(
            ca.cert_pem,
            ca.key_pem,
            common_name="n1",
            role=pki.ROLE_NODE,
            dns_names=[rpc.API_SERVER_NAME],
        )
    info = pki.cert_info(_api(ca).cert_pem)
    assert info.role == rpc.ROLE_API and info.server_auth and not info.client_auth


def test_short_lifetimes_are_not_mostly_backdated(ca: pki.CertAndKey) -> None:
    info = pki.cert_info(_api(ca, dt.timedelta(seconds=90)).cert_pem)
    assert info.not_after - info.not_before == dt.timedelta(seconds=99)


async def test_katcall_refuses_a_node_certificate_serving_the_api(
    ca: pki.CertAndKey, tmp_path: Path
) -> None:
    """The fake-API attack: a node serves ClusterAPI with its own (valid, same-CA)
    certificate at an address katcall uses; katcall refuses it, naming why."""
    async with served(ca, tmp_path) as (endpoint, _):
        with _admin_client(ca, endpoint) as client:
            with pytest.raises(CallError) as err:
                await asyncio.to_thread(client.get_cluster_info, kat_pb2.ClusterInfoRequest())
    assert "not a KAT API server" in str(err.value), err.value
    assert "O=kat:node" in str(err.value) and rpc.API_SERVER_NAME in str(err.value)


async def test_a_renewed_certificate_is_served_without_restart(
    ca: pki.CertAndKey, tmp_path: Path
) -> None:
    ask = kat_pb2.ClusterInfoRequest()
    async with served(ca, tmp_path) as (endpoint, d):
        # half a renewal (new key, old certificate) changes nothing yet
        pki.write_private_key(d / "srv.key", pki.generate_private_key())
        with _admin_client(ca, endpoint) as client:
            with pytest.raises(CallError):
                await asyncio.to_thread(client.get_cluster_info, ask)
        pki.write_pair(d / "srv.crt", d / "srv.key", _api(ca))  # a renewed API certificate
        with _admin_client(ca, endpoint) as client:
            info = await asyncio.to_thread(client.get_cluster_info, ask)
        assert info.leader_node == "real-api"


def _served_serial(port: int) -> str:
    import socket
    import ssl

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with tls.wrap_socket(raw) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der
    return pki.cert_info(ssl.DER_cert_to_PEM_cert(der).encode()).serial


async def test_the_metrics_endpoint_follows_a_renewal(
    ca: pki.CertAndKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from internal.observability import metrics_http

    monkeypatch.setattr(metrics_http, "RELOAD_SECONDS", 0.05)
    cert, key = tmp_path / "n.crt", tmp_path / "n.key"
    first = _node(ca)
    pki.write_pair(cert, key, first)
    port = free_port()
    task = asyncio.create_task(
        metrics_http.serve_metrics(
            "127.0.0.1",
            port,
            first.cert_pem,
            first.key_pem,
            ca.cert_pem,
            pair=KeyPairFile(cert, key),
        )
    )
    try:
        for _ in range(100):
            try:
                assert (
                    await asyncio.to_thread(_served_serial, port)
                    == pki.cert_info(first.cert_pem).serial
                )
                break
            except OSError:
                await asyncio.sleep(0.05)
        renewed = _node(ca)
        pki.write_pair(cert, key, renewed)
        want = pki.cert_info(renewed.cert_pem).serial
        for _ in range(100):
            if await asyncio.to_thread(_served_serial, port) == want:
                break
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(_served_serial, port) == want
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
