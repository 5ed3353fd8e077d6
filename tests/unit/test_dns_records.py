"""The cluster DNS zone: which names answer what (kat_agent/node/network/records.py), the
endpoint view the leader derives from its records (internal/core/endpoints.py), and the
node's DNS server over real loopback sockets (kat_agent/node/network/dns.py)."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from api.v1alpha1 import kat_pb2
from internal.core.endpoints import build_endpoint_set, is_endpoint
from kat_agent.node.network import records
from kat_agent.node.network.dns import DnsServer, parse_upstreams
from kat_agent.node.network.records import Kind, ZoneTable

D = "kat.cluster.local"
P = kat_pb2.Instance


def view(*ips: str, ports: bool = True, first: int = 0) -> kat_pb2.ServiceEndpoints:
    return kat_pb2.ServiceEndpoints(
        namespace="default",
        workload="web",
        endpoints=[
            kat_pb2.Endpoint(instance_id=f"web-{i}", ip=ip, node="n1")
            for i, ip in enumerate(ips, start=first)
        ],
        ports=[kat_pb2.ServicePort(name="http", container_port=8080, protocol=1)] if ports else [],
    )


def test_service_name_answers_every_ready_address_rotated() -> None:
    t = ZoneTable.build(D, [view("10.1.0.2", "10.1.0.3", "10.1.0.4")])
    first = t.lookup("web.default.svc.kat.cluster.local.", "A")
    second = t.lookup("WEB.default.svc.kat.cluster.local", "A")
    assert first.kind is Kind.ANSWER
    assert sorted(first.addresses) == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert sorted(second.addresses) == sorted(first.addresses)
    assert second.addresses[0] != first.addresses[0]  # rotated


def test_instance_name_answers_that_one_only_while_ready() -> None:
    t = ZoneTable.build(D, [view("10.1.0.2", "10.1.0.3")])
    assert t.lookup("web-1.web.default.svc.kat.cluster.local", "A").addresses == ("10.1.0.3",)
    assert t.lookup("web-9.web.default.svc.kat.cluster.local", "A").kind is Kind.NXDOMAIN


def test_srv_for_named_ports() -> None:
    t = ZoneTable.build(D, [view("10.1.0.2", "10.1.0.3")])
    found = t.lookup("_http._tcp.web.default.svc.kat.cluster.local", "SRV")
    assert {(s.port, s.target, s.address) for s in found.srv} == {
        (8080, "web-0.web.default.svc.kat.cluster.local", "10.1.0.2"),
        (8080, "web-1.web.default.svc.kat.cluster.local", "10.1.0.3"),
    }
    assert t.lookup("_http._udp.web.default.svc.kat.cluster.local", "SRV").kind is Kind.NXDOMAIN
    assert t.lookup("_ftp._tcp.web.default.svc.kat.cluster.local", "SRV").kind is Kind.NXDOMAIN


@pytest.mark.parametrize(
    "name",
    [
        "nope.default.svc.kat.cluster.local",
        "web.other.svc.kat.cluster.local",
        "x.kat.cluster.local",
        "a.b.c.d.web.default.svc.kat.cluster.local",
    ],
)
def test_unknown_cluster_names_are_nxdomain(name: str) -> None:
    assert ZoneTable.build(D, [view("10.1.0.2")]).lookup(name, "A").kind is Kind.NXDOMAIN


def test_known_names_without_data_and_names_outside() -> None:
    t = ZoneTable.build(D, [view()])
    assert t.lookup("web.default.svc.kat.cluster.local", "A") == records.NODATA  # none ready
    assert t.lookup("default.svc.kat.cluster.local", "A") == records.NODATA
    assert t.lookup("kat.cluster.local", "SOA") == records.NODATA
    assert t.lookup("example.org", "A").kind is Kind.FORWARD
    assert t.lookup("notkat.cluster.local", "A").kind is Kind.FORWARD


def test_search_path_is_short() -> None:
    assert records.search_path("default", D + ".") == [
        "default.svc.kat.cluster.local",
        "svc.kat.cluster.local",
    ]
    assert records.node_dns_address("10.100.4.0/23") == "10.100.4.1"


def rec(i: str, *, ready: bool = True, phase: int = P.RUNNING, ip: str = "10.1.0.2") -> P:
    return P(id=i, workload="web", namespace="default", node="n1", ip=ip, ready=ready, phase=phase)


def test_endpoint_view_lists_only_ready_serving_instances() -> None:
    bundle = kat_pb2.Bundle()
    bundle.workload.spec.type = kat_pb2.WorkloadSpec.SERVICE
    bundle.workload.spec.replicas = 3
    bundle.virtual_load_balancer.spec.ports.add(name="http", container_port=8080)
    rs = [
        rec("web-b"),
        rec("web-a", ip="10.1.0.3"),
        rec("web-c", ready=False),
        rec("web-d", phase=P.TERMINATING),  # ready flag stale: being stopped
        rec("web-e", ip=""),
        P(
            id="db-a",
            workload="db",
            namespace="default",
            node="n1",
            ip="10.1.0.9",
            ready=True,
            phase=P.RUNNING,
        ),  # deleted workload
    ]
    assert not is_endpoint(rs[3])
    (svc,) = build_endpoint_set(rs, {("default", "web"): bundle})
    assert [e.instance_id for e in svc.endpoints] == ["web-a", "web-b"]
    assert svc.ports[0].container_port == 8080 and svc.desired == 3


def test_upstreams() -> None:
    assert parse_upstreams("none") == []
    assert parse_upstreams("127.0.0.1:5353, 10.0.0.1") == [("127.0.0.1", 5353), ("10.0.0.1", 53)]
    conf = "nameserver 10.9.0.1\nnameserver 10.100.0.1\n"
    assert parse_upstreams(None, conf, own="10.100.0.1") == [("10.9.0.1", 53)]
    with pytest.raises(ValueError):
        parse_upstreams("not-an-ip")


# ---------------------------------------------------------------- the server, on loopback


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Upstream(asyncio.DatagramProtocol):
    """A resolver on loopback that answers every A query with 192.0.2.7."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (not isinstance: on 3.11 the selector's datagram transport is not a subclass)
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.asked: list[str] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = DNSRecord.parse(data)
        self.asked.append(str(q.q.qname))
        r = q.reply()
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.7"), ttl=60))
        self.transport.sendto(r.pack(), addr)


def queries() -> dict[str, float]:
    from internal.observability import metrics

    get = metrics.REGISTRY.get_sample_value
    return {a: get("kat_dns_queries_total", {"answer": a}) or 0.0 for a in metrics.DNS_ANSWERS}


async def ask(port: int, name: str, qtype: str = "A", tcp: bool = False) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    data = await asyncio.to_thread(q.send, "127.0.0.1", port, tcp, 3)
    return DNSRecord.parse(data)


async def test_server_answers_zone_and_forwards_the_rest() -> None:
    loop = asyncio.get_running_loop()
    up_port = free_port()
    up_transport, upstream = await loop.create_datagram_endpoint(
        Upstream, local_addr=("127.0.0.1", up_port)
    )
    port = free_port()
    server = DnsServer("127.0.0.1", port, D, [("127.0.0.1", up_port)])
    task = asyncio.create_task(server.serve())
    before = queries()
    try:
        server.update(ZoneTable.build(D, [view("10.1.0.2", "10.1.0.3")]))
        await asyncio.wait_for(server.listening.wait(), 10)
        firsts = set()
        for _ in range(4):
            r = await ask(port, "web.default.svc.kat.cluster.local")
            assert sorted(str(a.rdata) for a in r.rr) == ["10.1.0.2", "10.1.0.3"]
            assert all(a.ttl == records.TTL for a in r.rr)
            firsts.add(str(r.rr[0].rdata))
        assert firsts == {"10.1.0.2", "10.1.0.3"}  # rotated, also from the cache
        r = await ask(port, "web.default.svc.kat.cluster.local", tcp=True)
        assert len(r.rr) == 2
        r = await ask(port, "_http._tcp.web.default.svc.kat.cluster.local", "SRV")
        assert {a.rdata.port for a in r.rr} == {8080} and len(r.ar) == 2
        r = await ask(port, "nope.default.svc.kat.cluster.local")
        assert r.header.rcode == RCODE.NXDOMAIN
        r = await ask(port, "www.example.org")
        assert [str(a.rdata) for a in r.rr] == ["192.0.2.7"]
        assert upstream.asked == ["www.example.org."]
        # A new view (an instance went unready): answered at once, the cache is gone.
        server.update(ZoneTable.build(D, [view("10.1.0.3", first=1)]))
        r = await ask(port, "web.default.svc.kat.cluster.local")
        assert [str(a.rdata) for a in r.rr] == ["10.1.0.3"]
        # Garbage is dropped, and the server still answers afterwards.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x00\x01garbage", ("127.0.0.1", port))
        r = await ask(port, "web-1.web.default.svc.kat.cluster.local")
        assert [str(a.rdata) for a in r.rr] == ["10.1.0.3"]
        # kat_dns_queries_total{answer}: every query above, by how it was answered
        after = queries()
        assert {k: after[k] - before[k] for k in after} == {
            "zone": 8,
            "nxdomain": 1,
            "forwarded": 1,
            "refused": 0,
            "servfail": 0,
            "dropped": 1,
        }
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        up_transport.close()


async def test_without_upstream_external_names_are_refused() -> None:
    port = free_port()
    server = DnsServer("127.0.0.1", port, D, [])
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.wait_for(server.listening.wait(), 10)
        before = queries()
        r = await ask(port, "www.example.org")
        assert r.header.rcode == RCODE.REFUSED
        assert queries()["refused"] == before["refused"] + 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_new_leader_waits_for_every_live_node_before_publishing() -> None:
    from internal.core.endpoints import nodes_to_hear

    def node(name: str, cond: int) -> kat_pb2.Node:
        n = kat_pb2.Node()
        n.metadata.name = name
        n.status.condition = cond
        return n

    S = kat_pb2.NodeStatus
    nodes = [node("a", S.READY), node("b", S.UNKNOWN), node("c", S.NOT_READY)]
    assert nodes_to_hear(nodes, []) == ["a", "b"]
    assert nodes_to_hear(nodes, ["a"]) == ["b"]
    assert nodes_to_hear(nodes, ["a", "b"]) == []
