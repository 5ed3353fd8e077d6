"""The overlay's pure decisions (no I/O): which WireGuard peers a node should have, the
add/remove/update plan that takes the interface from what it has to that, the name and
addresses of the interface, and which peers have not shaken hands.

Every node has one WireGuard interface; every other node is a peer with allowed IPs =
that node's subnet. The node's own overlay address is the first host address of its
subnet (the same address the instance bridge's gateway has), so instances route the
cluster CIDR via it and the node's DNS can listen there.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from api.v1alpha1 import kat_pb2

# WireGuard's overhead: outer IPv6 header (40) + UDP (8) + WireGuard (32); what wg-quick
# subtracts too, so the same MTU fits IPv4 and IPv6 underlays.
WIREGUARD_OVERHEAD = 80
MIN_MTU = 1280
# NAT mappings for UDP commonly expire after 30 s or more; 25 s is WireGuard's own advice.
PERSISTENT_KEEPALIVE = 25
# A peer that has not completed a handshake for this long is reported (WireGuard redoes
# the handshake at least every 2 minutes while traffic or keepalives flow).
HANDSHAKE_STALE_SECONDS = 180
# How long a peer's advertised endpoint is tried before the observed one is.
ENDPOINT_FALLBACK_SECONDS = 15
INTERFACE_PREFIX = "kat"
MAX_INTERFACE_NAME = 15


def interface_name(cluster_uid: str, node_name: str) -> str:
    """The node's WireGuard interface: unique per cluster and node, because wireguard-go's
    control sockets (/var/run/wireguard/<name>.sock) are shared by every network
    namespace of a machine (dev clusters run many nodes on one)."""
    digest = hashlib.sha256(f"{cluster_uid}/{node_name}".encode()).hexdigest()
    return (INTERFACE_PREFIX + digest)[: MAX_INTERFACE_NAME - 2]


def node_address(subnet: str) -> str:
    """The node's own address on the overlay and on its instance network."""
    net = ipaddress.ip_network(subnet, strict=False)
    return str(net.network_address + 1)


def tunnel_mtu(underlay_mtu: int) -> int:
    return max(MIN_MTU, underlay_mtu - WIREGUARD_OVERHEAD)


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class DesiredPeer:
    node_name: str
    public_key: str
    endpoint: str  # host:port
    allowed_ips: tuple[str, ...]
    keepalive: int = PERSISTENT_KEEPALIVE
    fallback_endpoint: str = ""  # the address the leader saw, when it differs


@dataclass(frozen=True)
class ObservedPeer:
    public_key: str
    endpoint: str  # "" when none is known
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix seconds; 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    keepalive: int = 0


@dataclass
class PeerPlan:
    add: list[DesiredPeer] = field(default_factory=list)
    update: list[DesiredPeer] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)  # public keys

    def empty(self) -> bool:
        return not (self.add or self.update or self.remove)


def desired_peers(
    self_name: str, self_key: str, peers: Iterable[kat_pb2.Peer], default_port: int
) -> dict[str, DesiredPeer]:
    """Every other node with a key, an address and a subnet, by public key. A peer
    without one of them is left out until the leader knows it (it cannot be reached)."""
    out: dict[str, DesiredPeer] = {}
    for p in sorted(peers, key=lambda p: p.node_name):
        if p.node_name == self_name or not p.wireguard_public_key:
            continue
        if p.wireguard_public_key == self_key or not p.subnet or not p.advertise_address:
            continue
        port = p.wireguard_port or default_port
        fallback = ""
        if p.observed_address and p.observed_address != p.advertise_address:
            fallback = format_endpoint(p.observed_address, port)
        out[p.wireguard_public_key] = DesiredPeer(
            node_name=p.node_name,
            public_key=p.wireguard_public_key,
            endpoint=format_endpoint(p.advertise_address, port),
            allowed_ips=(str(ipaddress.ip_network(p.subnet, strict=False)),),
            fallback_endpoint=fallback,
        )
    return out


def choose_endpoint(
    peer: DesiredPeer, observed: ObservedPeer | None, now: float, tried_since: float
) -> str:
    """The endpoint to set for `peer`. While handshakes succeed, whatever the interface
    uses (WireGuard roams to where the peer's packets come from: never fight that).
    Otherwise the advertised endpoint; with a fallback (the address the leader saw), the
    two alternate every ENDPOINT_FALLBACK_SECONDS until one answers, so a node behind NAT
    is found at its public address and a moved node at its new advertised one.
    `tried_since`: when the current endpoint was set."""
    if observed is not None and observed.endpoint and observed.latest_handshake:
        if now - observed.latest_handshake < HANDSHAKE_STALE_SECONDS:
            return observed.endpoint
    if not peer.fallback_endpoint or observed is None:
        return peer.endpoint
    current = observed.endpoint or peer.endpoint
    if current not in (peer.endpoint, peer.fallback_endpoint):
        return peer.endpoint
    if now - tried_since < ENDPOINT_FALLBACK_SECONDS:
        return current
    return peer.fallback_endpoint if current == peer.endpoint else peer.endpoint


def plan_peers(
    desired: Mapping[str, DesiredPeer],
    observed: Mapping[str, ObservedPeer],
    endpoint_for: Mapping[str, str] | None = None,
) -> PeerPlan:
    """What to change so that the interface has exactly `desired` (incrementally: peers
    that are right are not touched, so their sessions and counters survive).
    `endpoint_for` overrides the endpoint to set per public key (see choose_endpoint)."""
    endpoint_for = endpoint_for or {}
    plan = PeerPlan()
    for key, want in desired.items():
        endpoint = endpoint_for.get(key, want.endpoint)
        have = observed.get(key)
        if have is None:
            plan.add.append(_with_endpoint(want, endpoint))
        elif (
            sorted(have.allowed_ips) != sorted(want.allowed_ips)
            or have.endpoint != endpoint
            or have.keepalive != want.keepalive
        ):
            plan.update.append(_with_endpoint(want, endpoint))
    plan.remove = sorted(k for k in observed if k not in desired)
    return plan


def _with_endpoint(peer: DesiredPeer, endpoint: str) -> DesiredPeer:
    if endpoint == peer.endpoint:
        return peer
    return DesiredPeer(
        peer.node_name,
        peer.public_key,
        endpoint,
        peer.allowed_ips,
        peer.keepalive,
        peer.fallback_endpoint,
    )


@dataclass(frozen=True)
class InterfaceDump:
    public_key: str
    listen_port: int
    peers: dict[str, ObservedPeer]


def parse_wg_dump(text: str) -> InterfaceDump:
    """`wg show <interface> dump`: a line for the interface (private key, public key,
    listen port, fwmark), then one per peer (public key, preshared key, endpoint, allowed
    ips, latest handshake, rx, tx, persistent keepalive). Tab separated."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty wg dump")
    head = lines[0].split("\t")
    if len(head) < 3:
        raise ValueError(f"unexpected wg dump header: {len(head)} fields")
    peers: dict[str, ObservedPeer] = {}
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) < 8:
            raise ValueError(f"unexpected wg dump peer line: {len(f)} fields")
        allowed = () if f[3] in ("(none)", "") else tuple(a for a in f[3].split(",") if a)
        peers[f[0]] = ObservedPeer(
            public_key=f[0],
            endpoint="" if f[2] == "(none)" else f[2],
            allowed_ips=allowed,
            latest_handshake=int(f[4]),
            rx_bytes=int(f[5]),
            tx_bytes=int(f[6]),
            keepalive=0 if f[7] == "off" else int(f[7]),
        )
    return InterfaceDump(head[1], int(head[2]) if head[2].isdigit() else 0, peers)


def stale_peers(
    desired: Mapping[str, DesiredPeer],
    observed: Mapping[str, ObservedPeer],
    now: float,
    known_since: Mapping[str, float],
    limit: float = HANDSHAKE_STALE_SECONDS,
) -> list[str]:
    """Names of the desired peers with no handshake for `limit` seconds (a peer added
    less than `limit` ago is given that long for its first one)."""
    out = []
    for key, want in desired.items():
        have = observed.get(key)
        last = have.latest_handshake if have else 0
        since = last or known_since.get(key, now)
        if now - since > limit:
            out.append(want.node_name)
    return sorted(out)


def removed_from_cluster(self_name: str, snapshot: kat_pb2.AssignmentSet) -> bool:
    """The leader's peer list names every node of the cluster, this one included; a
    non-empty list without this node means it was removed (left the cluster)."""
    return bool(snapshot.peers) and all(p.node_name != self_name for p in snapshot.peers)
