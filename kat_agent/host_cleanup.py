"""What `kat-agent uninstall` takes off the node besides the unit and the workload users:
KAT's containers in root's Podman, its network interfaces and its nftables table.

Only what KAT names its own is touched: containers labelled kat.dws.rip/managed;
interfaces named as KAT names them (the WireGuard overlay `kat` + 10 hex digits,
overlay.interface_name; the instance bridge `kat0`; the host ends of rootless
instances' veths `kv` + 11 hex digits, instance_net.host_ifname); the table
`inet kat_guard` (network/firewall.py). Everything here works on the network
namespace the command runs in (a dev-cluster node: `nsenter --net=...`). Each step
reports what it did; a missing tool (podman, nft) is a note, not a failure.
Blocking: for the command line."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from internal.core.node_plan import LABEL_MANAGED
from kat_agent.node.network.firewall import TABLE
from kat_agent.node.network.instance_net import BRIDGE
from kat_agent.node.podman.service import PodmanStorage

# overlay.interface_name ("kat" + 10 hex), instance_net.host_ifname ("kv" + 11 hex).
KAT_INTERFACE = re.compile(rf"^(kat[0-9a-f]{{10}}|kv[0-9a-f]{{11}}|{re.escape(BRIDGE)})$")
WIREGUARD_SOCKETS = Path("/var/run/wireguard")
STOP_SECONDS = 10


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def stop_containers(environ: Mapping[str, str] | None = None) -> list[str]:
    """Stop and remove every KAT container of root's Podman (the storage the agent
    uses: KAT_PODMAN_ROOT/RUNROOT, else Podman's default). Rootless workloads'
    containers end with their users (users.remove_workload_user)."""
    podman = shutil.which("podman")
    if podman is None:
        return ["podman not found: no containers to stop"]
    base = [
        podman,
        *PodmanStorage.from_env(os.environ if environ is None else environ).global_args(),
    ]
    listed = _run([*base, "ps", "-a", "-q", "--filter", f"label={LABEL_MANAGED}=true"])
    if listed.returncode != 0:
        return [f"could not list containers: {listed.stderr.strip()[:300]}"]
    ids = listed.stdout.split()
    if not ids:
        return []
    res = _run([*base, "rm", "--force", "--time", str(STOP_SECONDS), *ids])
    if res.returncode != 0:
        return [f"podman rm of {len(ids)} container(s) failed: {res.stderr.strip()[:300]}"]
    return [f"stopped and removed {len(ids)} KAT container(s)"]


def kat_interfaces(names: list[str]) -> list[str]:
    return [n for n in names if KAT_INTERFACE.match(n)]


def remove_interfaces() -> list[str]:
    # pyroute2's IPRoute runs its own event loop: not on a thread that has one running
    # (the command line's), hence a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_remove_interfaces).result()


def _remove_interfaces() -> list[str]:
    from pyroute2 import IPRoute

    done = []
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
        for name in kat_interfaces(names):
            for idx in ipr.link_lookup(ifname=name):
                ipr.link("del", index=idx)
            # wireguard-go ends when its device goes; its control socket may stay.
            (WIREGUARD_SOCKETS / f"{name}.sock").unlink(missing_ok=True)
            done.append(f"removed interface {name}")
    return done


def remove_firewall() -> list[str]:
    nft = shutil.which("nft")
    if nft is None:
        return []
    if _run([nft, "list", "table", "inet", TABLE]).returncode != 0:
        return []  # not there
    res = _run([nft, "delete", "table", "inet", TABLE])
    if res.returncode != 0:
        return [f"could not delete nftables table inet {TABLE}: {res.stderr.strip()[:300]}"]
    return [f"removed nftables table inet {TABLE}"]
