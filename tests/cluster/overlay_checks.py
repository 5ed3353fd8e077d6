"""Checks shared by the overlay tests (root and rootless dev clusters): instances of
examples/web reaching each other by overlay IP, what the bridge carries meanwhile, and
the WireGuard state of every node."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from tests.devcluster import DevCluster, wait_until

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "examples" / "web"
WEB_PORT = 8080


def instances(c: DevCluster, workload: str = "web") -> list[dict]:
    p = c.katcall("get", "instances", "-o", "json", timeout=30)
    assert p.returncode == 0, p.stderr
    return [i for i in json.loads(p.stdout)["items"] if i["workload"] == workload]


def web_running(c: DevCluster, count: int = 3) -> list[dict]:
    """Apply examples/web and wait for `count` RUNNING, ready instances with an IP."""
    p = c.katcall("apply", "-f", str(WEB), "--wait", timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr

    def ready() -> list[dict] | None:
        got = [
            i
            for i in instances(c)
            if i.get("phase") == "RUNNING" and i.get("ready") and i.get("ip")
        ]
        return got if len(got) == count and len({i["node"] for i in got}) == count else None

    return wait_until(ready, timeout=120, what=f"{count} web instances with IPs on 3 nodes")


def fetch(c: DevCluster, src: dict, ip: str, timeout: int = 5) -> str:
    """HTTP GET http://ip:8080/ from inside instance `src` (katcall exec)."""
    p = c.katcall(
        "exec",
        "web",
        "--instance",
        src["id"],
        "--",
        "timeout",
        str(timeout),
        "wget",
        "-q",
        "-O",
        "-",
        f"http://{ip}:{WEB_PORT}/",
        timeout=timeout + 30,
    )
    return p.stdout if p.returncode == 0 else ""


def all_pairs(
    c: DevCluster, insts: list[dict], deadline: float = 60
) -> dict[tuple[str, str], bool]:
    """Every (source instance, target instance) on different nodes -> answered. On a
    loaded machine an instance can be restarted meanwhile (its exec health check times
    out) and come back with another address: a pair that fails is retried with the
    target's current address until `deadline` seconds have passed."""
    out: dict[tuple[str, str], bool] = {}
    for src in insts:
        for dst in insts:
            if src["node"] != dst["node"]:
                out[(src["id"], dst["id"])] = "hello from" in fetch(c, src, dst["ip"])
    end = time.monotonic() + deadline
    while not all(out.values()) and time.monotonic() < end:
        current = {i["id"]: i for i in instances(c) if i.get("phase") == "RUNNING"}
        for (s, d), ok in out.items():
            if not ok and s in current and d in current and current[d].get("ip"):
                out[(s, d)] = "hello from" in fetch(c, current[s], current[d]["ip"])
    return out


class Capture:
    """tcpdump on the dev cluster's own bridge (on the host), for a filter."""

    def __init__(self, c: DevCluster, bpf: str) -> None:
        self.path = c.dir / f"capture-{time.monotonic_ns()}.pcap"
        tcpdump = shutil.which("tcpdump") or "tcpdump"
        self.proc = subprocess.Popen(
            [tcpdump, "-n", "-i", c.state()["bridge"], "-U", "-w", str(self.path), bpf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # tcpdump says "listening on ..." once the capture runs
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "listening" in line, line

    def stop(self) -> int:
        """Stop and return the number of packets captured."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        out = subprocess.run(
            ["tcpdump", "-n", "-r", str(self.path)], capture_output=True, text=True, timeout=30
        )
        return len([ln for ln in out.stdout.splitlines() if ln.strip()])


def overlay_of(c: DevCluster) -> dict[str, dict]:
    """Node name -> status.overlay as `katcall get nodes -o json` shows it."""
    return {n["metadata"]["name"]: n["status"].get("overlay") or {} for n in c.nodes_json()}


def wg_peers(interface: str) -> dict[str, str]:
    """Public key -> allowed IPs of the interface's peers (`wg show dump`; the control
    socket is machine-wide, so this works from the host)."""
    p = subprocess.run(
        ["wg", "show", interface, "dump"], capture_output=True, text=True, timeout=10
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()[1:]
    return {ln.split("\t")[0]: ln.split("\t")[3] for ln in lines if ln.strip()}


def wait_meshed(c: DevCluster, nodes: int = 3) -> list[str]:
    """The names of the cluster's `nodes` nodes once all are READY and fully meshed."""
    names = wait_until(lambda: len(c.ready_nodes()) == nodes and c.ready_nodes(), timeout=60)
    wait_until(lambda: meshed(c, names), timeout=60, what="a full WireGuard mesh")
    return names


def meshed(c: DevCluster, names: list[str]) -> bool:
    """Every node's interface is up with every other node as a peer that shook hands."""
    ov = overlay_of(c)
    for name in names:
        o = ov.get(name) or {}
        peers = {p["nodeName"] for p in o.get("peers", []) if p.get("latestHandshake")}
        if not o.get("up") or peers != set(names) - {name}:
            return False
    return True


def reaches_ip(c: DevCluster, src_node: str, ip: str, timeout: float = 60) -> bool:
    """A running web instance on `src_node` (whichever runs now) gets an answer from ip."""

    def attempt() -> bool:
        now = {i["node"]: i for i in instances(c) if i.get("phase") == "RUNNING"}
        src = now.get(src_node)
        return bool(src and "hello from" in fetch(c, src, ip))

    try:
        return bool(wait_until(attempt, timeout=timeout, interval=0.5))
    except TimeoutError:
        return False


def reaches(c: DevCluster, src_node: str, dst_node: str, timeout: float = 60) -> bool:
    """Some running web instance on `src_node` gets an answer from the one on `dst_node`
    (current instances each try: under load a health check may have replaced one)."""

    def attempt() -> bool:
        now = {i["node"]: i for i in instances(c) if i.get("phase") == "RUNNING" and i.get("ip")}
        src, dst = now.get(src_node), now.get(dst_node)
        return bool(src and dst and "hello from" in fetch(c, src, dst["ip"]))

    try:
        return bool(wait_until(attempt, timeout=timeout, interval=0.5))
    except TimeoutError:
        return False
