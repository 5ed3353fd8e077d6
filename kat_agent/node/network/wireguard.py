"""The WireGuard adapter: one interface in the agent's network namespace.

The link is made by the kernel module through pyroute2 where it exists, else by the
userspace `wireguard-go` (this machine's kernel has no module); either way it is then
configured the same way, with `wg` (which speaks netlink to the kernel and the UAPI socket
/var/run/wireguard/<name>.sock to wireguard-go). Addresses, MTU and routes go through
pyroute2. wireguard-go is started in a session of its own, so the interface outlives the
agent (a restart re-adopts it: every step here is idempotent).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kat_agent.node.network import overlay

log = logging.getLogger(__name__)

KERNEL = "kernel"
USERSPACE = "wireguard-go"
UAPI_DIR = Path("/var/run/wireguard")
USERSPACE_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}
READY_SECONDS = 10.0


class WireGuardError(Exception):
    pass


@dataclass(frozen=True)
class LinkConfig:
    name: str
    private_key_file: Path
    listen_port: int
    address: str  # the node's overlay address (a /32 on the interface)
    cluster_cidr: str  # routed through the interface
    mtu: int
    log_file: Path | None = None  # wireguard-go's output


async def _run(*argv: str, input_: bytes | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input_ is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(input_)
    if proc.returncode != 0:
        raise WireGuardError(f"{' '.join(argv[:3])}: {err.decode(errors='replace').strip()}")
    return out.decode()


def _link_kind(name: str) -> str | None:
    """ "wireguard" (kernel), "tun" (wireguard-go), another kind, or None (no such link)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        return (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or "unknown"


def _kernel_add(name: str) -> bool:
    """Try the kernel module; False when this kernel has none."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=name, kind="wireguard")
        except NetlinkError as exc:
            if exc.code in (errno.EOPNOTSUPP, errno.ENODEV, errno.EINVAL):
                return False
            if exc.code == errno.EEXIST:
                return True
            raise
    return True


def underlay_mtu(address: str) -> int:
    """MTU of the interface that holds `address` (1500 when it cannot be found)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for a in ipr.get_addr():
            if a.get_attr("IFA_ADDRESS") == address:
                links = ipr.get_links(a["index"])
                if links:
                    return int(links[0].get_attr("IFLA_MTU") or 1500)
    return 1500


def _configure_ip(cfg: LinkConfig) -> None:
    """MTU, up, the /32 address and the cluster route: set only what differs."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=cfg.name)[0]
        link = ipr.get_links(idx)[0]
        if link.get_attr("IFLA_MTU") != cfg.mtu:
            ipr.link("set", index=idx, mtu=cfg.mtu)
        if not link["flags"] & 1:  # IFF_UP
            ipr.link("set", index=idx, state="up")
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)}
        if cfg.address not in have:
            ipr.addr("add", index=idx, address=cfg.address, prefixlen=32)
        net = ipaddress.ip_network(cfg.cluster_cidr)
        try:
            ipr.route(
                "replace",
                dst=str(net.network_address),
                dst_len=net.prefixlen,
                oif=idx,
                prefsrc=cfg.address,
            )
        except NetlinkError as exc:
            raise WireGuardError(f"route {net} via {cfg.name}: {exc}") from exc
    # The node routes between its instances and the tunnel.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])


class WireGuardLink:
    """One node's interface. `ensure` makes or adopts it; `dump`, `apply` and `delete`."""

    def __init__(self, cfg: LinkConfig, wireguard_go: str = "wireguard-go") -> None:
        self.cfg = cfg
        self.wireguard_go = wireguard_go
        self.backend = ""

    async def ensure(self) -> bool:
        """Create the interface if it is missing, then configure it; True if it was made
        now (False: adopted an existing one). Idempotent."""
        name = self.cfg.name
        kind = await asyncio.to_thread(_link_kind, name)
        made = False
        if kind is None:
            if await asyncio.to_thread(_kernel_add, name):
                self.backend = KERNEL
            else:
                await self._start_userspace()
                self.backend = USERSPACE
            made = True
            log.info("overlay: created WireGuard interface %s (%s)", name, self.backend)
        elif kind == "wireguard":
            self.backend = KERNEL
        elif kind == "tun":
            self.backend = USERSPACE
        else:
            raise WireGuardError(f"interface {name} exists and is a {kind}, not WireGuard")
        if not made:
            log.info("overlay: adopted WireGuard interface %s (%s)", name, self.backend)
        await self._configure_keys()
        await asyncio.to_thread(_configure_ip, self.cfg)
        return made

    async def _start_userspace(self) -> None:
        if shutil.which(self.wireguard_go) is None:
            raise WireGuardError(
                "no WireGuard kernel module and no wireguard-go on PATH (install wireguard-go)"
            )
        env = {**os.environ, **USERSPACE_ENV}
        log_path = self.cfg.log_file or Path(os.devnull)
        # Its output goes to a file, not a pipe: the daemon it forks keeps the descriptors.
        out = await asyncio.to_thread(open, log_path, "ab")
        with out:
            # A session of its own: the interface must outlive this agent (and its group).
            proc = await asyncio.create_subprocess_exec(
                self.wireguard_go,
                self.cfg.name,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
            rc = await proc.wait()  # the first process forks the daemon and exits
        if rc != 0:
            raise WireGuardError(f"wireguard-go {self.cfg.name} failed (exit {rc}); see {log_path}")
        sock = UAPI_DIR / f"{self.cfg.name}.sock"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_SECONDS
        while not sock.exists() or await asyncio.to_thread(_link_kind, self.cfg.name) is None:
            if loop.time() > deadline:
                raise WireGuardError(f"wireguard-go made no interface {self.cfg.name}")
            await asyncio.sleep(0.05)

    async def _configure_keys(self) -> None:
        dump = await self.dump()
        want_pub = await _run("wg", "pubkey", input_=self.cfg.private_key_file.read_bytes())
        if dump.public_key == want_pub.strip() and dump.listen_port == self.cfg.listen_port:
            return
        await _run(
            "wg",
            "set",
            self.cfg.name,
            "listen-port",
            str(self.cfg.listen_port),
            "private-key",
            str(self.cfg.private_key_file),
        )

    async def dump(self) -> overlay.InterfaceDump:
        return overlay.parse_wg_dump(await _run("wg", "show", self.cfg.name, "dump"))

    async def apply(self, plan: overlay.PeerPlan) -> None:
        """One `wg set` for the whole plan (add, update and remove at once)."""
        if plan.empty():
            return
        argv = ["wg", "set", self.cfg.name]
        for key in plan.remove:
            argv += ["peer", key, "remove"]
        for p in [*plan.add, *plan.update]:
            argv += ["peer", p.public_key, "allowed-ips", ",".join(p.allowed_ips)]
            argv += ["persistent-keepalive", str(p.keepalive)]
            if p.endpoint:
                argv += ["endpoint", p.endpoint]
        await _run(*argv)

    async def delete(self) -> None:
        """Remove the interface (wireguard-go exits when its device goes)."""
        await asyncio.to_thread(_delete_link, self.cfg.name)
        sock = UAPI_DIR / f"{self.cfg.name}.sock"
        for _ in range(100):  # wireguard-go removes its socket as it exits
            if not sock.exists():
                break
            await asyncio.sleep(0.05)
        sock.unlink(missing_ok=True)
