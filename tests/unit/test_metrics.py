"""The /metrics endpoint (real TLS on loopback) and the metric registry."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from internal.observability import metrics
from internal.observability.grpc_metrics import split_method
from internal.observability.metrics_http import start_metrics_server
from internal.security import pki
from kat_agent.credentials import CredentialError, issue_client_certificate
from kat_agent.node.podman.client import podman_operation


@pytest.fixture(scope="module")
def ca() -> pki.CertAndKey:
    return pki.create_ca("kat-ca")


def _client_ctx(ca: pki.CertAndKey, tmp: Path, role: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if role is not None:
        pair = pki.issue_certificate(ca.cert_pem, ca.key_pem, common_name="c", role=role)
        (tmp / "c.crt").write_bytes(pair.cert_pem)
        (tmp / "c.key").write_bytes(pair.key_pem)
        ctx.load_cert_chain(tmp / "c.crt", tmp / "c.key")
    return ctx


@contextlib.asynccontextmanager
async def serving(ca: pki.CertAndKey) -> AsyncIterator[int]:
    node = pki.issue_certificate(
        ca.cert_pem, ca.key_pem, common_name="n1", role=pki.ROLE_NODE, ip_addresses=["127.0.0.1"]
    )
    server = await start_metrics_server("127.0.0.1", 0, node.cert_pem, node.key_pem, ca.cert_pem)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _get(port: int, ctx: ssl.SSLContext, requests: int = 1) -> list[tuple[int, bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    out = []
    try:
        for _ in range(requests):  # one connection, keep-alive
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split()[1])
            length = next(
                int(h.split(b":")[1])
                for h in head.split(b"\r\n")
                if h.lower().startswith(b"content-length")
            )
            out.append((status, await reader.readexactly(length)))
    finally:
        writer.close()
    return out


async def test_monitoring_certificate_reads_metrics(ca: pki.CertAndKey, tmp_path: Path) -> None:
    metrics.HEARTBEATS.inc()
    async with serving(ca) as port:
        answers = await _get(port, _client_ctx(ca, tmp_path, pki.ROLE_MONITORING), requests=2)
    assert [s for s, _ in answers] == [200, 200]
    families = {f.name: f for f in text_string_to_metric_families(answers[1][1].decode())}
    assert families["kat_heartbeats_received"].samples[0].value >= 1
    assert "kat_apply_to_scheduled_seconds" in families


async def test_node_certificate_is_forbidden(ca: pki.CertAndKey, tmp_path: Path) -> None:
    async with serving(ca) as port:
        [(status, body)] = await _get(port, _client_ctx(ca, tmp_path, pki.ROLE_NODE))
    assert status == 403 and b"kat:monitoring" in body


async def test_no_client_certificate_is_refused(ca: pki.CertAndKey, tmp_path: Path) -> None:
    async with serving(ca) as port:
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await _get(port, _client_ctx(ca, tmp_path, None))


async def test_certificate_from_another_ca_is_refused(ca: pki.CertAndKey, tmp_path: Path) -> None:
    other = pki.create_ca("other")
    ctx = _client_ctx(other, tmp_path, pki.ROLE_MONITORING)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    async with serving(ca) as port:
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await _get(port, ctx)


def test_names_follow_conventions() -> None:
    text = metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("process_", "python_")):
            continue
        assert family.name.startswith("kat_"), family.name
        if family.type == "counter":
            assert f"{family.name}_total" in text
        assert not family.name.endswith(("_ms", "_milliseconds", "_bytes_total"))


def test_phase_gauge_keeps_emptied_phases_at_zero() -> None:
    from api.v1alpha1 import kat_pb2

    P = kat_pb2.Instance
    metrics.count_instances(metrics.NODE_INSTANCES, [P.RUNNING, P.RUNNING, P.PENDING])
    metrics.count_instances(metrics.NODE_INSTANCES, [P.RUNNING])
    get = metrics.REGISTRY.get_sample_value
    assert get("kat_node_instances", {"phase": "RUNNING"}) == 1
    assert get("kat_node_instances", {"phase": "PENDING"}) == 0


def test_overlay_handshake_age_per_peer_at_scrape_time() -> None:
    peers = metrics.OverlayPeers()
    peers.clock = lambda: 1000.0
    peers.set("kat0wg", {"node2": (990.0, 5, 7), "node3": (0.0, 0, 0)})
    fams = {f.name: f for f in peers.collect()}
    age = {
        s.labels["peer"]: s.value for s in fams["kat_overlay_peer_handshake_age_seconds"].samples
    }
    assert age["node2"] == 10.0 and age["node3"] != age["node3"]  # NaN: never
    peers.clock = lambda: 1030.0
    fams = {f.name: f for f in peers.collect()}
    assert fams["kat_overlay_peer_handshake_age_seconds"].samples[0].value == 40.0
    rx = {s.labels["peer"]: s.value for s in fams["kat_overlay_peer_received_bytes"].samples}
    assert rx == {"node2": 5, "node3": 0}
    peers.forget("kat0wg")
    assert all(not f.samples for f in peers.collect())
    # the registry's copy is in the exposition, which stays parseable
    metrics.OVERLAY_PEERS.set("kat-test", {"nodeX": (1.0, 1, 2)})
    try:
        text = metrics.exposition().decode()
        assert 'kat_overlay_peer_handshake_age_seconds{peer="nodeX"}' in text
        assert 'kat_overlay_peer_sent_bytes_total{peer="nodeX"} 2.0' in text
        list(text_string_to_metric_families(text))
    finally:
        metrics.OVERLAY_PEERS.forget("kat-test")


def test_bounded_label_values() -> None:
    assert split_method("/kat.v1alpha1.ClusterAPI/Apply") == ("ClusterAPI", "Apply")
    assert podman_operation("POST", "containers/0123abcd/start") == "POST containers/start"
    assert podman_operation("DELETE", "networks/kat") == "DELETE networks"
    assert metrics.etcd_operation("get /kat/nodes/vm") == "get"
    assert metrics.etcd_operation("transaction on /kat/x") == "txn"


def test_issue_monitoring_certificate(ca: pki.CertAndKey, tmp_path: Path) -> None:
    dd = tmp_path / "dd"
    (dd / "pki").mkdir(parents=True)
    from internal.host.datadir import DataDir

    d = DataDir(dd)
    pki.write_pair(d.ca_cert, d.ca_key, ca)
    paths = issue_client_certificate(dd, "prometheus", "monitoring", tmp_path / "out")
    key = tmp_path / "out" / "prometheus.key"
    assert key in paths and key.stat().st_mode & 0o777 == 0o600
    cert = (tmp_path / "out" / "prometheus.crt").read_bytes()
    assert tuple(pki.peer_identity(cert)) == ("prometheus", pki.ROLE_MONITORING)
    with pytest.raises(CredentialError, match="etcd member"):
        issue_client_certificate(tmp_path / "empty", "p", "monitoring", tmp_path / "o2")
