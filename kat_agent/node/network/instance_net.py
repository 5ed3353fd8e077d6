"""Overlay addresses for rootless instances, plumbed by the root agent.

A rootless container runs in a network namespace its own (rootless) Podman made, with
slirp4netns for the outside world; it keeps its own user namespace. The root agent adds
what CNI's bridge plugin would: a veth pair whose host end joins the node's instance
bridge (`kat0`, address = first host of the node's subnet, as the root-mode Podman bridge
gateway) and whose other end it moves into the container's namespace as `kat0`, with an
address from the node's subnet (internal/core/ipam.py) and a route to the cluster CIDR via
the node. Nothing else changes inside the container.

Level-triggered (`sync` with what runs, every pass): a running rootless container without
its veth gets one (also after it restarted: the old pair went with the old namespace); an
address whose instance no longer runs is released. Allocations are kept in
<data-dir>/agent/instance-addresses.json so a restarted agent keeps them.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from internal.core import ipam
from internal.host.files import write_private
from kat_agent.node.network import overlay

log = logging.getLogger(__name__)

BRIDGE = "kat0"
CONTAINER_IFNAME = "kat0"
SYNC_SECONDS = 0.5
_HOST_IFNAME = re.compile(r"^kv[0-9a-f]{11}$")


def host_ifname(instance_id: str) -> str:
    return "kv" + hashlib.sha256(instance_id.encode()).hexdigest()[:11]


def _peer_ifname(instance_id: str) -> str:
    return "kc" + hashlib.sha256(instance_id.encode()).hexdigest()[:11]


def _ensure_bridge(name: str, address: str, prefixlen: int, mtu: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            ipr.link("add", ifname=name, kind="bridge")
            found = ipr.link_lookup(ifname=name)
        idx = found[0]
        link = ipr.get_links(idx)[0]
        if link.get_attr("IFLA_MTU") != mtu:
            ipr.link("set", index=idx, mtu=mtu)
        if not link["flags"] & 1:
            ipr.link("set", index=idx, state="up")
        have = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)
        }
        if (address, prefixlen) not in have:
            ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def _host_links() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}


def _add_veth(host: str, peer: str, bridge: str, pid: int, mtu: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for stale in (host, peer):
            for idx in ipr.link_lookup(ifname=stale):
                ipr.link("del", index=idx)
        ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "mtu": mtu}, mtu=mtu)
        bridge_idx = ipr.link_lookup(ifname=bridge)[0]
        host_idx = ipr.link_lookup(ifname=host)[0]
        peer_idx = ipr.link_lookup(ifname=peer)[0]
        ipr.link("set", index=peer_idx, net_ns_pid=pid)
        ipr.link("set", index=host_idx, master=bridge_idx, state="up")


def _instance_links() -> list[str]:
    """Host ends of instance veths (kv<hash>), also ones no allocation names any more."""
    return sorted(n for n in _host_links() if _HOST_IFNAME.match(n))


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=name):
            ipr.link("del", index=idx)


class InstanceNetwork:
    def __init__(
        self,
        subnet: str,
        cluster_cidr: str,
        state_file: Path,
        mtu: int = 1420,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        net = ipaddress.ip_network(subnet, strict=False)
        self.subnet = str(net)
        self.prefixlen = net.prefixlen
        self.gateway = overlay.node_address(subnet)
        self.cluster_cidr = cluster_cidr
        self.state_file = state_file
        self.mtu = mtu
        self.on_change = on_change
        self._addresses: dict[str, str] = self._load()  # instance id -> address
        self._plumbed: dict[str, int] = {}  # instance id -> pid plumbed into
        self._bridge_ready = False

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable %s: %s", self.state_file, exc)
            return {}
        net = ipaddress.ip_network(self.subnet)
        return {
            str(k): str(v)
            for k, v in data.items()
            if isinstance(v, str) and ipaddress.ip_address(v) in net
        }

    def _save(self) -> None:
        write_private(self.state_file, json.dumps(self._addresses, sort_keys=True).encode())

    def address_of(self, instance_id: str) -> str:
        """The instance's overlay address once it is plumbed ("" before)."""
        return self._addresses.get(instance_id, "") if instance_id in self._plumbed else ""

    async def sync(self, running: Mapping[str, int]) -> None:
        """Plumb every running rootless container (instance id -> pid) that lacks it;
        release the addresses of the rest."""
        changed = False
        for iid in [i for i in self._addresses if i not in running]:
            address = self._addresses.pop(iid)
            self._plumbed.pop(iid, None)
            await asyncio.to_thread(_delete_link, host_ifname(iid))
            log.info("instance %s: released overlay address %s", iid, address)
            changed = True
        if changed:
            await asyncio.to_thread(self._save)
        if not running:
            if changed:
                self.on_change()
            return
        if not self._bridge_ready:
            await asyncio.to_thread(_ensure_bridge, BRIDGE, self.gateway, self.prefixlen, self.mtu)
            self._bridge_ready = True
        links = await asyncio.to_thread(_host_links)
        for iid, pid in sorted(running.items()):
            if host_ifname(iid) in links and self._plumbed.get(iid) in (pid, None):
                self._plumbed[iid] = pid  # there (also after an agent restart)
                continue
            try:
                await self._plumb(iid, pid)
            except Exception as exc:  # noqa: BLE001 - one container must not stop the rest
                log.warning("instance %s: cannot plumb its overlay address: %s", iid, exc)
                continue
            changed = True
        if changed:
            self.on_change()

    async def _plumb(self, iid: str, pid: int) -> None:
        address = self._addresses.get(iid)
        if address is None:
            address = ipam.free_address(self.subnet, self._addresses.values())
            if address is None:
                raise RuntimeError(f"no free address left in {self.subnet}")
            self._addresses[iid] = address
            await asyncio.to_thread(self._save)
        peer = _peer_ifname(iid)
        await asyncio.to_thread(_add_veth, host_ifname(iid), peer, BRIDGE, pid, self.mtu)
        batch = "\n".join(
            [
                f"link set {peer} name {CONTAINER_IFNAME}",
                f"link set {CONTAINER_IFNAME} mtu {self.mtu} up",
                f"addr add {address}/{self.prefixlen} dev {CONTAINER_IFNAME}",
                f"route replace {self.cluster_cidr} via {self.gateway} dev {CONTAINER_IFNAME}",
            ]
        )
        proc = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--net=/proc/{pid}/ns/net",
            "ip",
            "-batch",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate(batch.encode() + b"\n")
        if proc.returncode != 0:
            await asyncio.to_thread(_delete_link, host_ifname(iid))
            raise RuntimeError(f"configuring its namespace: {err.decode().strip()}")
        self._plumbed[iid] = pid
        log.info("instance %s: overlay address %s (pid %d)", iid, address, pid)

    async def run(self, source: Callable[[], Mapping[str, int] | None]) -> None:
        """Sync with `source` (None: not known yet, change nothing) every SYNC_SECONDS."""
        while True:
            running = source()
            if running is not None:
                await self.sync(running)
            await asyncio.sleep(SYNC_SECONDS)

    async def remove_all(self) -> None:
        """The node left: release every address, remove every instance veth (the
        container ends and routes go with them) and the bridge (with its address and
        route). Idempotent: what is gone already is skipped."""
        await self.sync({})
        for name in await asyncio.to_thread(_instance_links):
            await asyncio.to_thread(_delete_link, name)
        await asyncio.to_thread(_delete_link, BRIDGE)
        self._bridge_ready = False
        self._plumbed.clear()
