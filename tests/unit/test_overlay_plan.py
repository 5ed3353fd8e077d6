"""The overlay's pure decisions: desired peers from the leader's node list, the
incremental plan, endpoint choice, wg dump parsing, stale handshakes, names, addresses."""

from __future__ import annotations

import pytest

from api.v1alpha1 import kat_pb2
from internal.core import ipam
from kat_agent.node.network import overlay as ov
from kat_agent.node.network.keys import ensure_keypair


def peer(name: str, key: str, addr: str, subnet: str, observed: str = "") -> kat_pb2.Peer:
    return kat_pb2.Peer(
        node_name=name,
        advertise_address=addr,
        subnet=subnet,
        wireguard_public_key=key,
        wireguard_port=51820,
        observed_address=observed,
    )


PEERS = [
    peer("a", "KA", "10.0.0.1", "10.100.0.0/23"),
    peer("b", "KB", "10.0.0.2", "10.100.2.0/23"),
    peer("c", "KC", "10.0.0.3", "10.100.4.0/23"),
]


def observed(p: ov.DesiredPeer, **kw: object) -> ov.ObservedPeer:
    base = dict(
        public_key=p.public_key,
        endpoint=p.endpoint,
        allowed_ips=p.allowed_ips,
        latest_handshake=0,
        keepalive=p.keepalive,
    )
    base.update(kw)
    return ov.ObservedPeer(**base)  # type: ignore[arg-type]


def test_desired_peers_are_every_other_node_with_its_subnet() -> None:
    want = ov.desired_peers("a", "KA", PEERS, 51820)
    assert sorted(want) == ["KB", "KC"]
    assert want["KB"].allowed_ips == ("10.100.2.0/23",)
    assert want["KB"].endpoint == "10.0.0.2:51820"
    assert want["KB"].keepalive == ov.PERSISTENT_KEEPALIVE


def test_peers_without_key_subnet_or_address_wait() -> None:
    incomplete = [peer("x", "", "10.0.0.9", "10.100.8.0/23"), peer("y", "KY", "10.0.0.8", "")]
    assert ov.desired_peers("a", "KA", [*PEERS, *incomplete], 51820).keys() == {"KB", "KC"}


def test_plan_is_incremental() -> None:
    want = ov.desired_peers("a", "KA", PEERS, 51820)
    have = {"KB": observed(want["KB"], latest_handshake=100), "KOLD": observed(want["KC"])}
    have["KOLD"] = ov.ObservedPeer("KOLD", "10.0.0.7:51820", ("10.100.6.0/23",), 0)
    plan = ov.plan_peers(want, have)
    assert [p.node_name for p in plan.add] == ["c"]
    assert plan.update == [] and plan.remove == ["KOLD"]
    # nothing to do once the interface matches
    have = {k: observed(p) for k, p in want.items()}
    assert ov.plan_peers(want, have).empty()


def test_changed_subnet_or_address_is_an_update() -> None:
    want = ov.desired_peers("a", "KA", PEERS, 51820)
    have = {k: observed(p) for k, p in want.items()}
    moved = [PEERS[0], peer("b", "KB", "10.0.0.22", "10.100.2.0/23"), PEERS[2]]
    plan = ov.plan_peers(ov.desired_peers("a", "KA", moved, 51820), have)
    assert [p.endpoint for p in plan.update] == ["10.0.0.22:51820"]
    assert not plan.add and not plan.remove


def test_endpoint_roaming_is_left_alone_while_handshakes_work() -> None:
    want = ov.desired_peers("a", "KA", PEERS, 51820)["KB"]
    roamed = observed(want, endpoint="192.0.2.1:4444", latest_handshake=1000)
    assert ov.choose_endpoint(want, roamed, now=1010, tried_since=0) == "192.0.2.1:4444"


def test_fallback_to_observed_address_alternates_until_a_handshake() -> None:
    p = ov.desired_peers(
        "a", "KA", [peer("b", "KB", "10.0.0.2", "10.100.2.0/23", observed="10.9.9.9")], 51820
    )["KB"]
    assert p.fallback_endpoint == "10.9.9.9:51820"
    silent = observed(p)
    assert ov.choose_endpoint(p, silent, now=5, tried_since=0) == p.endpoint
    late = ov.ENDPOINT_FALLBACK_SECONDS + 1
    assert ov.choose_endpoint(p, silent, now=late, tried_since=0) == p.fallback_endpoint
    on_fallback = observed(p, endpoint=p.fallback_endpoint)
    assert ov.choose_endpoint(p, on_fallback, now=late, tried_since=0) == p.endpoint
    # no fallback when the leader saw the advertised address itself
    same = ov.desired_peers(
        "a", "KA", [peer("b", "KB", "10.0.0.2", "10.100.2.0/23", observed="10.0.0.2")], 51820
    )["KB"]
    assert same.fallback_endpoint == ""


def test_parse_wg_dump() -> None:
    text = (
        "PRIV\tPUB\t51820\toff\n"
        "KB\t(none)\t10.0.0.2:51820\t10.100.2.0/23\t1700000000\t10\t20\t25\n"
        "KC\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
    )
    d = ov.parse_wg_dump(text)
    assert d.public_key == "PUB" and d.listen_port == 51820
    assert d.peers["KB"].allowed_ips == ("10.100.2.0/23",)
    assert d.peers["KB"].latest_handshake == 1700000000 and d.peers["KB"].keepalive == 25
    assert d.peers["KC"].endpoint == "" and d.peers["KC"].allowed_ips == ()
    with pytest.raises(ValueError):
        ov.parse_wg_dump("")
    with pytest.raises(ValueError):
        ov.parse_wg_dump("PRIV\tPUB\t1\toff\nshort\tline\n")


def test_stale_peers_named_after_the_grace_period() -> None:
    want = ov.desired_peers("a", "KA", PEERS, 51820)
    have = {"KB": observed(want["KB"], latest_handshake=1000)}
    limit = ov.HANDSHAKE_STALE_SECONDS
    known = {"KB": 0.0, "KC": 900.0}
    assert ov.stale_peers(want, have, now=1000 + 10, known_since=known) == []
    assert ov.stale_peers(want, have, now=1000 + limit + 1, known_since=known) == ["b", "c"]


def test_removed_from_cluster() -> None:
    snap = kat_pb2.AssignmentSet(peers=PEERS)
    assert not ov.removed_from_cluster("a", snap)
    assert ov.removed_from_cluster("z", snap)
    assert not ov.removed_from_cluster("z", kat_pb2.AssignmentSet())  # no list yet


def test_names_addresses_and_mtu() -> None:
    a = ov.interface_name("cluster-1", "node-a")
    assert len(a) <= 15 and a.startswith("kat")
    assert a == ov.interface_name("cluster-1", "node-a")
    assert a != ov.interface_name("cluster-2", "node-a") != ov.interface_name("cluster-1", "b")
    assert ov.node_address("10.100.2.0/23") == "10.100.2.1"
    assert ov.tunnel_mtu(1500) == 1420 and ov.tunnel_mtu(1300) == ov.MIN_MTU
    assert ov.format_endpoint("fd00::1", 51820) == "[fd00::1]:51820"


def test_free_address_skips_the_node_address() -> None:
    assert ipam.free_address("10.100.2.0/23", []) == "10.100.2.2"
    assert ipam.free_address("10.100.2.0/23", ["10.100.2.2", "10.100.2.3"]) == "10.100.2.4"
    assert ipam.free_address("10.100.2.0/30", ["10.100.2.2"]) is None


def test_keypair_is_private_and_stable(tmp_path) -> None:
    path = tmp_path / "wireguard.key"
    pub = ensure_keypair(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(pub) == 44 and ensure_keypair(path) == pub
    assert pub not in path.read_text()
