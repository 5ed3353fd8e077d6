"""nftables rules, owned by the agent, that keep instances off every node's control
ports (API, agent, join, etcd client and peer).

One table, `inet kat_guard`, replaced as a whole (atomically, by one `nft -f`) when
what it should hold changes, and checked again every few seconds (level-triggered:
a rule deleted behind the agent's back comes back):
- output: TCP from a workload user's process (rootless Podman's network helper
  runs as the workload user, so that is every rootless instance's traffic) to a
  control port, on any address, is reset;
- input and forward: TCP from the cluster's instance addresses (clusterCIDR: root
  mode containers, the overlay) to a control port is reset.
The table stays when the agent stops (its containers keep running too);
`remove()` takes it away. Without `nft` on PATH the agent logs it once and runs on.
"""

from __future__ import annotations

import asyncio
import logging
import pwd
import shutil
from collections.abc import Sequence

from api.v1alpha1 import kat_pb2
from kat_agent.node.podman.users import USERNAME_PREFIX

log = logging.getLogger(__name__)

TABLE = "kat_guard"
CHECK_SECONDS = 10.0


def control_ports(spec: kat_pb2.ClusterConfigurationSpec) -> list[int]:
    ports = {
        spec.api_port,
        spec.agent_port,
        spec.join_port,
        spec.etcd_client_port,
        spec.etcd_peer_port,
    }
    return sorted(p for p in ports if p)


def workload_uids() -> list[int]:
    return sorted(p.pw_uid for p in pwd.getpwall() if p.pw_name.startswith(USERNAME_PREFIX))


def ruleset(ports: Sequence[int], uids: Sequence[int], cidrs: Sequence[str]) -> str:
    """The whole table (pure). Rejected with a TCP reset: a connect fails at once."""
    dports = "{ " + ", ".join(str(p) for p in ports) + " }"
    out = ["        type filter hook output priority 0; policy accept;"]
    if uids:
        skuid = "{ " + ", ".join(str(u) for u in uids) + " }"
        out.append(f"        meta skuid {skuid} tcp dport {dports} reject with tcp reset")
    chains = [("output", out)]
    for hook in ("input", "forward"):
        body = [f"        type filter hook {hook} priority 0; policy accept;"]
        if cidrs:
            saddr = "{ " + ", ".join(cidrs) + " }"
            body.append(f"        ip saddr {saddr} tcp dport {dports} reject with tcp reset")
        chains.append((hook, body))
    lines = [f"table inet {TABLE} {{"]
    for name, body in chains:
        lines += [f"    chain {name} {{", *body, "    }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


async def _nft(*args: str, script: str | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "nft",
        *args,
        stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(script.encode() if script is not None else None)
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def install(text: str) -> None:
    """Replace the table by `text` in one transaction (create, delete, define)."""
    script = f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{text}"
    rc, out = await _nft("-f", "-", script=script)
    if rc != 0:
        raise RuntimeError(f"nft refused the {TABLE} table: {out}")


async def installed() -> str:
    rc, out = await _nft("list", "table", "inet", TABLE)
    return out if rc == 0 else ""


async def remove() -> None:
    if shutil.which("nft") is not None:
        await _nft("delete", "table", "inet", TABLE)


async def run_firewall(spec: kat_pb2.ClusterConfigurationSpec) -> None:
    """Keep the table as it should be, for ever."""
    if shutil.which("nft") is None:
        log.warning("nft is not installed: instances are NOT kept off the control ports")
        await asyncio.Event().wait()
    ports, cidrs = control_ports(spec), [spec.cluster_cidr] if spec.cluster_cidr else []
    applied, seen = "", ""
    while True:
        want = ruleset(ports, await asyncio.to_thread(workload_uids), cidrs)
        current = await installed()
        # nft lists the table in its own layout: compare with what it showed after
        # the last install, not with the text sent.
        if want != applied or current != seen:
            await install(want)
            applied, seen = want, await installed()
            log.info("nftables table %s installed (control ports %s)", TABLE, ports)
        await asyncio.sleep(CHECK_SECONDS)
