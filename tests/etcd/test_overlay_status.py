"""The leader's side of overlay status, on a real leader (etcd, mTLS gRPC) with simulated
agents: the overlay each node reports is shown on the node (kept in memory: changing
handshake times cost no etcd write), peers carry the address the leader saw the join come
from, and a node reporting peers without a handshake gets the OverlayDegraded condition
and an event naming them, cleared (with an event) once they shake hands again. The same
for a node whose ingress proxy does not serve the current view (IngressDegraded)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from api.v1alpha1 import kat_pb2
from tests.leader_harness import Leader, SimNet, poll

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None or shutil.which("kat-agent") is None,
    reason="needs etcd and kat-agent on PATH (scripts/setup.sh)",
)


@pytest.fixture(scope="module")
def leader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leader]:
    with Leader(tmp_path_factory.mktemp("ovs") / "cluster", tick=1, loss=3) as lead:
        yield lead


@pytest.fixture(scope="module")
def net(leader: Leader) -> Iterator[SimNet]:
    sims = SimNet(leader)
    try:
        yield sims
    finally:
        sims.close()


def node(leader: Leader, name: str) -> kat_pb2.Node:
    return leader.stub().GetNode(kat_pb2.NodeRequest(name=name), timeout=10)


def handshake_seen(leader: Leader, name: str) -> int:
    """The handshake time of the node's first overlay peer as the leader shows it."""
    peers = node(leader, name).status.overlay.peers
    return peers[0].latest_handshake.seconds if peers else -1


def overlay(handshake: int, stale: list[str]) -> kat_pb2.OverlayStatus:
    st = kat_pb2.OverlayStatus(interface="katabc", backend="wireguard-go", up=True, mtu=1420)
    p = st.peers.add(node_name="b", endpoint="127.0.0.9:51820", allowed_ips="10.100.2.0/23")
    p.latest_handshake.seconds = handshake
    st.stale_peers.extend(stale)
    return st


def test_overlay_state_is_shown_without_etcd_writes_per_beat(leader: Leader, net: SimNet) -> None:
    a = net.add("ov-a")
    a.overlay = overlay(1000, [])
    poll(lambda: node(leader, a.name).status.overlay.up, what="overlay reported")
    version = node(leader, a.name).metadata.resource_version
    for t in (2000, 3000):
        a.overlay = overlay(t, [])
        poll(
            lambda t=t: node(leader, a.name).status.overlay.peers[0].latest_handshake.seconds == t,
            what="new handshake time shown",
        )
    assert node(leader, a.name).metadata.resource_version == version
    # the peer list handed to nodes carries the address the leader saw the join from
    assert a.snapshot is not None
    poll(lambda: any(p.node_name == a.name for p in a.snapshot.peers), what="peer list")
    me = next(p for p in a.snapshot.peers if p.node_name == a.name)
    assert me.observed_address == "127.0.0.1"


def test_unreachable_peers_give_a_condition_and_events(leader: Leader, net: SimNet) -> None:
    a = net.add("ov-b")
    a.overlay = overlay(0, ["ov-x", "ov-y"])

    def degraded() -> kat_pb2.Condition | None:
        for c in node(leader, a.name).status.conditions:
            if c.type == "OverlayDegraded" and c.status == "True":
                return c
        return None

    cond = poll(degraded, what="OverlayDegraded")
    assert "ov-x, ov-y" in cond.message
    events = [e for e in leader.events(a.name, "") if e.reason == "OverlayPeersUnreachable"]
    assert events and "ov-x, ov-y" in events[0].message
    a.overlay = overlay(5000, [])
    poll(lambda: degraded() is None, what="condition cleared")
    poll(
        lambda: any(e.reason == "OverlayPeersReachable" for e in leader.events(a.name, "")),
        what="recovery event",
    )


def test_an_ingress_proxy_that_does_not_take_the_view_gives_a_condition_and_events(
    leader: Leader, net: SimNet
) -> None:
    a = net.add("ing-a")
    a.ingress = kat_pb2.IngressStatus(serving=True)
    poll(lambda: a.connected, what="node beating")
    version = node(leader, a.name).metadata.resource_version

    def degraded() -> kat_pb2.Condition | None:
        for c in node(leader, a.name).status.conditions:
            if c.type == "IngressDegraded" and c.status == "True":
                return c
        return None

    why = "HAProxy did not take the new configuration: Cannot bind socket [0.0.0.0:8443]"
    for failures in (1, 2, 3):  # the counter moves with every retry: one write, one event
        a.ingress = kat_pb2.IngressStatus(serving=True, problem=why, reload_failures=failures)
        a.overlay = overlay(failures, [])  # marks the beat: shown once the leader had it
        poll(lambda t=failures: handshake_seen(leader, a.name) == t, what=f"beat {failures} heard")
    cond = degraded()
    assert cond is not None and cond.message == why and cond.reason == "ProxyNotUpdated"
    failing = [e for e in leader.events(a.name, "") if e.reason == "IngressProxyFailing"]
    assert len(failing) == 1 and "Cannot bind socket" in failing[0].message
    assert failing[0].type == kat_pb2.Event.WARNING
    a.ingress = kat_pb2.IngressStatus(serving=True, reload_failures=3)
    poll(lambda: degraded() is None, what="condition cleared")
    poll(
        lambda: any(e.reason == "IngressProxyRecovered" for e in leader.events(a.name, "")),
        what="recovery event",
    )
    assert node(leader, a.name).metadata.resource_version > version
