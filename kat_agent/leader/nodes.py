"""The leader's view of nodes: heartbeats, liveness and node records.

Liveness lives in memory (the time of each node's last heartbeat); etcd is
written only when something a user can see changes: the condition, addresses,
resources, labels, taints or instance states. A heartbeat that changes nothing
costs no etcd write. Every node write on the leader goes through here, under a
per-node lock, so the cache and etcd agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from api.v1alpha1 import kat_pb2
from internal.core.events import new_event
from internal.observability import metrics
from internal.state.kv import StaleWrite
from internal.state.store import Store
from kat_agent.node.network.overlay import HANDSHAKE_STALE_SECONDS

log = logging.getLogger(__name__)

READY = kat_pb2.NodeStatus.READY
OVERLAY_DEGRADED = "OverlayDegraded"
INGRESS_DEGRADED = "IngressDegraded"
NOT_READY = kat_pb2.NodeStatus.NOT_READY


@dataclass(frozen=True)
class _Condition:
    """A node condition kept from what its heartbeats report, and its events."""

    type: str
    reason_true: str
    reason_false: str
    ok_message: str
    event_true: str
    event_false: str
    recovered_message: str


_OVERLAY = _Condition(
    OVERLAY_DEGRADED, "PeersUnreachable", "AllPeersReachable",
    "every peer has shaken hands recently", "OverlayPeersUnreachable",
    "OverlayPeersReachable", "every peer shakes hands again",
)  # fmt: skip
# From the problem the node's ingress proxy reports (none from a node that runs none).
_INGRESS = _Condition(
    INGRESS_DEGRADED, "ProxyNotUpdated", "ProxyServing",
    "HAProxy serves the current ingress view", "IngressProxyFailing",
    "IngressProxyRecovered", "HAProxy serves the current view again",
)  # fmt: skip


@dataclass
class _Cached:
    node: kat_pb2.Node
    revision: int


class NodeRegistry:
    def __init__(
        self,
        store: Store,
        config: kat_pb2.ClusterConfigurationSpec,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._nodes: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_seen: dict[str, float] = {}
        self._last_seen_wall: dict[str, datetime] = {}
        # Each node's last heartbeat, serialized: most beats repeat the last one
        # exactly, and those need no work beyond noting the time.
        self._last_beat: dict[str, bytes] = {}
        # Each node's last reported overlay status: in memory only (handshake ages
        # change with every beat); only the OverlayDegraded condition is stored.
        self._overlay: dict[str, kat_pb2.OverlayStatus] = {}
        self._since = clock()
        # Bumped on every change to a node record, so derived views can be cached.
        self.version = 0
        # Called with the name of every node marked NOT_READY (its streams are dropped).
        self.on_lost: list[Callable[[str], Awaitable[None]]] = []
        # Called with the name of every node whose record was deleted (its open streams
        # are cut: kat_agent/leader/revocation.py).
        self.on_removed: list[Callable[[str], None]] = []

    async def load(self) -> None:
        """Fill the cache from etcd; liveness starts counting from now."""
        self._nodes = {
            v.msg.metadata.name: _Cached(v.msg, v.mod_revision)
            for v in await self._store.list_nodes()
        }
        self._since = self._clock()

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def names(self) -> list[str]:
        return sorted(self._nodes)

    def get(self, name: str) -> kat_pb2.Node | None:
        cached = self._nodes.get(name)
        if cached is None:
            return None
        node = kat_pb2.Node()
        node.CopyFrom(cached.node)
        seen = self._last_seen_wall.get(name)
        if seen is not None:
            node.status.last_heartbeat.FromDatetime(seen)
        overlay = self._overlay.get(name)
        if overlay is not None:
            node.status.overlay.CopyFrom(overlay)
        return node

    def bound_certificate(self, name: str) -> str | None:
        """SHA-256 of the certificate the node was given at join (None: no such node,
        "": not recorded, a node that joined before this was kept)."""
        cached = self._nodes.get(name)
        return None if cached is None else cached.node.status.certificate_sha256

    def previous_certificate(self, name: str) -> str:
        """SHA-256 of the certificate the node held before its last renewal ("" if none)."""
        cached = self._nodes.get(name)
        return "" if cached is None else cached.node.status.previous_certificate_sha256

    async def forget(self, name: str) -> None:
        """Delete the node's record (it leaves the cluster)."""
        async with self._lock(name):
            await self._store.delete_node(name)
            self._nodes.pop(name, None)
            self._last_seen.pop(name, None)
            self._last_seen_wall.pop(name, None)
            self._last_beat.pop(name, None)
            self._overlay.pop(name, None)
            self.version += 1
        for listener in self.on_removed:
            listener(name)

    def touch(self) -> None:
        """Mark the node set as changed, so that whoever watches `version` looks again."""
        self.version += 1

    def stored(self) -> list[kat_pb2.Node]:
        """The cached records themselves, without copying: do not modify them."""
        return [c.node for c in self._nodes.values()]

    def all(self) -> list[kat_pb2.Node]:
        return [n for n in (self.get(name) for name in self.names()) if n is not None]

    def adopt(self, node: kat_pb2.Node, revision: int) -> None:
        """Record a node written elsewhere on the leader (a join)."""
        self._nodes[node.metadata.name] = _Cached(node, revision)
        self.version += 1

    async def mutate(
        self, name: str, change: Callable[[kat_pb2.Node], None]
    ) -> kat_pb2.Node | None:
        """Apply `change` to the node and write it if anything differs.

        Returns the node as stored, or None for an unknown node."""
        async with self._lock(name):
            for _ in range(5):
                cached = self._nodes.get(name)
                if cached is None:
                    return None
                updated = kat_pb2.Node()
                updated.CopyFrom(cached.node)
                change(updated)
                if updated == cached.node:
                    return updated
                try:
                    rev = await self._store.update_node(updated, cached.revision)
                except StaleWrite:
                    fresh = await self._store.get_node(name)
                    if fresh is None:
                        self._nodes.pop(name, None)
                        return None
                    self._nodes[name] = _Cached(fresh.msg, fresh.mod_revision)
                    continue
                updated.metadata.resource_version = rev
                self._nodes[name] = _Cached(updated, rev)
                self.version += 1
                return updated
            raise RuntimeError(f"node {name}: too many concurrent updates")

    async def heartbeat(self, req: kat_pb2.HeartbeatRequest) -> bool:
        """Record a heartbeat; returns False for a node the cluster does not know."""
        name = req.node_name
        if name not in self._nodes:
            return False
        self._last_seen[name] = self._clock()
        self._last_seen_wall[name] = datetime.now(UTC)
        previous = self._nodes[name].node.status.condition
        if req.HasField("overlay"):
            overlay = kat_pb2.OverlayStatus()
            overlay.CopyFrom(req.overlay)
            req.ClearField("overlay")  # not part of what is compared and stored
            self._overlay[name] = overlay
            await self._overlay_condition(name, list(overlay.stale_peers))
        # The ingress proxy: a condition only (its counters change with every failure).
        await self._keep_condition(name, _INGRESS, req.ingress.problem)
        req.ClearField("ingress")
        beat = req.SerializeToString(deterministic=True)
        if previous == READY and self._last_beat.get(name) == beat:
            return True

        def apply(node: kat_pb2.Node) -> None:
            st = node.status
            st.condition = READY
            st.capacity.CopyFrom(req.capacity)
            st.allocatable.CopyFrom(req.allocatable)
            if req.advertise_address:
                st.advertise_address = req.advertise_address
            if req.wireguard_public_key:
                st.wireguard_public_key = req.wireguard_public_key
            st.agent_version = req.agent_version
            del st.instances[:]
            st.instances.extend(req.instances)
            # Labels are set at registration (init/join --labels) and then only with
            # `katcall label node`: a heartbeat never changes them (as kubelet's
            # --node-labels), or every beat would undo the operator's labels.
            del node.spec.taints[:]
            node.spec.taints.extend(req.taints)

        await self.mutate(name, apply)
        self._last_beat[name] = beat
        if previous != READY:
            message = "heartbeats resumed" if previous == NOT_READY else "first heartbeat received"
            await self._event(name, "NodeReady", message, warning=False)
        return True

    async def _overlay_condition(self, name: str, stale: list[str]) -> None:
        """Keep the node's OverlayDegraded condition in line with the peers it reports
        without a handshake; written (and an event recorded) only when that set changes."""
        message = (
            "no WireGuard handshake with " + ", ".join(sorted(stale)) + " for over "
            f"{HANDSHAKE_STALE_SECONDS}s"
            if stale
            else ""
        )
        await self._keep_condition(name, _OVERLAY, message)

    async def _keep_condition(self, name: str, kind: _Condition, problem: str) -> None:
        """The condition `kind.type` True with `problem` as its message while there is
        one, False once it is gone; written (and an event recorded) only when it changes
        (a node that never had the condition gets none while all is well)."""
        cached = self._nodes.get(name)
        if cached is None:
            return
        have = next((c for c in cached.node.status.conditions if c.type == kind.type), None)
        if (have.message if have is not None and have.status == "True" else "") == problem:
            return

        def apply(node: kat_pb2.Node) -> None:
            conds = [c for c in node.status.conditions if c.type != kind.type]
            cond = kat_pb2.Condition(
                type=kind.type,
                status="True" if problem else "False",
                reason=kind.reason_true if problem else kind.reason_false,
                message=problem or kind.ok_message,
            )
            cond.last_transition_time.FromDatetime(datetime.now(UTC))
            del node.status.conditions[:]
            node.status.conditions.extend([*conds, cond])

        await self.mutate(name, apply)
        if problem:
            await self._event(name, kind.event_true, problem, warning=True)
        elif have is not None and have.status == "True":
            await self._event(name, kind.event_false, kind.recovered_message, warning=False)

    def overdue(self) -> list[str]:
        """READY nodes silent for longer than nodeLossTimeoutSeconds."""
        now = self._clock()
        limit = self._config.node_loss_timeout_seconds
        return [
            name
            for name, c in self._nodes.items()
            if c.node.status.condition == READY
            and now - self._last_seen.get(name, self._since) > limit
        ]

    async def mark_lost(self) -> list[str]:
        lost = []
        for name in self.overdue():

            def apply(node: kat_pb2.Node) -> None:
                node.status.condition = NOT_READY

            await self.mutate(name, apply)
            lost.append(name)
            silent = self._config.node_loss_timeout_seconds
            await self._event(
                name, "NodeNotReady", f"no heartbeat for over {silent}s", warning=True
            )
            log.warning("node %s is NOT_READY: no heartbeat for over %ss", name, silent)
            for listener in self.on_lost:
                await listener(name)
        return lost

    async def run_health(self) -> None:
        """Reconcile loop: mark silent nodes NOT_READY, twice a tick."""
        interval = max(0.2, self._config.agent_tick_seconds / 2)
        while True:
            await self.mark_lost()
            metrics.count_nodes(n.status.condition for n in self.stored())
            await asyncio.sleep(interval)

    async def _event(self, node: str, reason: str, message: str, *, warning: bool) -> None:
        await self._store.record_event(
            new_event(reason, message, kind="Node", name=node, warning=warning)
        )
