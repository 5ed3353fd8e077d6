"""The node's overlay reconcile loop: keeps its WireGuard interface up and its peers equal
to the other nodes the leader lists (level-triggered, incremental, restart-safe), reports
the interface's state for heartbeats, and removes the interface when the node leaves.

Peers come with every assignment snapshot (the leader watches the node records in etcd and
sends a new snapshot to every node when one joins, leaves or changes address). Until the
first list arrives the interface keeps whatever peers it has: an agent restarted while
the leader is away must not cut its instances off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from api.v1alpha1 import kat_pb2
from internal.host.datadir import DataDir, NodeIdentity
from internal.observability import metrics
from kat_agent.node.network import overlay
from kat_agent.node.network.keys import ensure_keypair
from kat_agent.node.network.wireguard import LinkConfig, WireGuardLink, underlay_mtu

log = logging.getLogger(__name__)

RESYNC_SECONDS = 5.0


class Overlay:
    def __init__(
        self,
        dd: DataDir,
        identity: NodeIdentity,
        spec: kat_pb2.ClusterConfigurationSpec,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.public_key = ensure_keypair(dd.wireguard_key)
        self.port = spec.wireguard_port or 51820
        self.cfg = LinkConfig(
            name=overlay.interface_name(identity.cluster_uid, identity.name),
            private_key_file=dd.wireguard_key,
            listen_port=self.port,
            address=overlay.node_address(identity.subnet),
            cluster_cidr=spec.cluster_cidr,
            mtu=0,
            log_file=dd.root / "agent" / "wireguard-go.log",
        )
        self.link: WireGuardLink | None = None
        self._clock = clock
        self._peers: list[kat_pb2.Peer] | None = None
        self._leave = False
        self._wake = asyncio.Event()
        self._known_since: dict[str, float] = {}
        self._tried_since: dict[str, float] = {}
        self._status = kat_pb2.OverlayStatus(interface=self.cfg.name, address=self.cfg.address)
        self.on_change: Callable[[], None] = lambda: None  # e.g. an early heartbeat

    @property
    def interface(self) -> str:
        return self.cfg.name

    def offer(self, snapshot: kat_pb2.AssignmentSet) -> None:
        """A new assignment snapshot: its peer list is the cluster's node set."""
        if overlay.removed_from_cluster(self.identity.name, snapshot):
            if not self._leave:
                log.warning("overlay: this node is no longer in the cluster; removing it")
            self._leave = True
        elif snapshot.peers:
            self._peers = list(snapshot.peers)
        self._wake.set()

    def status(self) -> kat_pb2.OverlayStatus:
        return self._status

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.reconcile_once()
            except Exception as exc:  # noqa: BLE001 - reported, retried next pass
                log.error("overlay: %s", exc)
                self._status.up = False
                self._status.error = str(exc)
                self.link = None  # make or adopt the interface again
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESYNC_SECONDS):
                    await self._wake.wait()

    async def mtu(self) -> int:
        """The tunnel's MTU: the underlay's (where the advertised address is) less
        WireGuard's overhead. Instance interfaces use it too, so their packets fit."""
        return overlay.tunnel_mtu(
            await asyncio.to_thread(underlay_mtu, self.identity.advertise_address)
        )

    async def _ensure_link(self) -> WireGuardLink:
        if self.link is not None:
            return self.link
        mtu = await self.mtu()
        cfg = LinkConfig(**{**self.cfg.__dict__, "mtu": mtu})
        link = WireGuardLink(cfg)
        await link.ensure()
        self.cfg = cfg
        self.link = link
        log.info(
            "overlay: %s (%s) %s/32, port %d, mtu %d, routes %s",
            cfg.name,
            link.backend,
            cfg.address,
            cfg.listen_port,
            cfg.mtu,
            cfg.cluster_cidr,
        )
        return link

    async def reconcile_once(self) -> None:
        if self._leave:
            await self.remove()
            return
        link = await self._ensure_link()
        try:
            dump = await link.dump()
        except Exception:
            self.link = None  # gone behind our back: made again on the next pass
            raise
        desired: dict[str, overlay.DesiredPeer] = {}
        if self._peers is not None:
            desired = overlay.desired_peers(
                self.identity.name, self.public_key, self._peers, self.port
            )
            now = self._clock()
            for key in desired:
                self._known_since.setdefault(key, now)
            endpoints = {
                k: overlay.choose_endpoint(
                    d, dump.peers.get(k), now, self._tried_since.get(k, self._known_since[k])
                )
                for k, d in desired.items()
            }
            plan = overlay.plan_peers(desired, dump.peers, endpoints)
            if not plan.empty():
                await link.apply(plan)
                for p in [*plan.add, *plan.update]:
                    self._tried_since[p.public_key] = now
                for key in plan.remove:
                    self._known_since.pop(key, None)
                    self._tried_since.pop(key, None)
                log.info(
                    "overlay: peers +%s ~%s -%d",
                    [p.node_name for p in plan.add],
                    [p.node_name for p in plan.update],
                    len(plan.remove),
                )
                dump = await link.dump()
        self._report(link, dump, desired)

    def _report(
        self,
        link: WireGuardLink,
        dump: overlay.InterfaceDump,
        desired: dict[str, overlay.DesiredPeer],
    ) -> None:
        names = {k: d.node_name for k, d in desired.items()}
        metrics.OVERLAY_PEERS.set(
            self.cfg.name,
            {
                names.get(k, k[:8]): (float(p.latest_handshake), p.rx_bytes, p.tx_bytes)
                for k, p in dump.peers.items()
            },
        )
        st = kat_pb2.OverlayStatus(
            interface=self.cfg.name,
            backend=link.backend,
            up=True,
            mtu=self.cfg.mtu,
            listen_port=dump.listen_port,
            address=self.cfg.address,
        )
        for key, p in sorted(dump.peers.items(), key=lambda kv: names.get(kv[0], kv[0])):
            ps = st.peers.add(
                node_name=names.get(key, ""),
                endpoint=p.endpoint,
                allowed_ips=",".join(p.allowed_ips),
                rx_bytes=p.rx_bytes,
                tx_bytes=p.tx_bytes,
            )
            if p.latest_handshake:
                ps.latest_handshake.FromDatetime(datetime.fromtimestamp(p.latest_handshake, UTC))
        st.stale_peers.extend(
            overlay.stale_peers(desired, dump.peers, self._clock(), self._known_since)
        )
        changed = list(st.stale_peers) != list(self._status.stale_peers) or not self._status.up
        self._status = st
        if changed:
            self.on_change()

    async def remove(self) -> None:
        """Take the interface (and with it its address and routes) away: the node left."""
        link = self.link or WireGuardLink(self.cfg)
        await link.delete()
        self.link = None
        metrics.OVERLAY_PEERS.forget(self.cfg.name)
        self._status = kat_pb2.OverlayStatus(
            interface=self.cfg.name, up=False, error="removed: the node left the cluster"
        )
