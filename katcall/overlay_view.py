"""How katcall shows a node's overlay: a short OVERLAY column for `get nodes -o wide`,
and the interface and its peers for `describe node`."""

from __future__ import annotations

import time

from api.v1alpha1 import kat_pb2
from katcall import output

# A peer counts as connected when its last handshake is this recent (WireGuard redoes the
# handshake every 2 minutes while anything flows; keepalives make something flow).
HANDSHAKE_FRESH_SECONDS = 180


def _age(p: kat_pb2.OverlayPeerStatus, now: float) -> float | None:
    return now - p.latest_handshake.seconds if p.latest_handshake.seconds else None


def summary(o: kat_pb2.OverlayStatus, now: float | None = None) -> str:
    """e.g. "kat1a2b3c4d5e/wireguard-go up 2/2" (peers with a recent handshake / all)."""
    if not o.interface:
        return "<none>"
    now = time.time() if now is None else now
    fresh = sum(
        1 for p in o.peers if (a := _age(p, now)) is not None and a < HANDSHAKE_FRESH_SECONDS
    )
    return f"{o.interface}/{o.backend or '?'} {'up' if o.up else 'down'} {fresh}/{len(o.peers)}"


def lines(node: kat_pb2.Node, now: float | None = None) -> list[str]:
    o, now = node.status.overlay, time.time() if now is None else now
    if not o.interface:
        return ["Interface:      <none reported>"]
    out = [
        f"Interface:      {o.interface} ({o.backend or '?'}), {'up' if o.up else 'down'}, "
        f"address {o.address or '-'}, port {o.listen_port}, mtu {o.mtu}"
    ]
    if o.error:
        out.append(f"Error:          {o.error}")
    for c in node.status.conditions:
        if c.status == "True":
            out.append(f"Condition:      {c.type} ({c.reason}): {c.message}")
    rows = []
    for p in o.peers:
        age = _age(p, now)
        shook = "never" if age is None else output.age(max(0.0, age)) + " ago"
        rows.append([p.node_name or "?", p.endpoint or "-", p.allowed_ips, shook])
    if rows:
        out += output.table(["PEER", "ENDPOINT", "ALLOWED-IPS", "HANDSHAKE"], rows).split("\n")
    return out
