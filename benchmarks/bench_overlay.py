"""TCP throughput and latency between two dev-cluster nodes, over the WireGuard overlay
and over the plain underlay (the bridge between the namespaces), in one run.

    python3 benchmarks/bench_overlay.py [--seconds 10] [--pings 50]

A 2-node dev cluster is brought up (real agents, wireguard-go); once the nodes' overlay
interfaces have shaken hands, an iperf3 server runs in node 2's namespace and node 1 is
the client, first to node 2's underlay address, then to its overlay address (the first
host of its subnet, on its WireGuard interface). Reported for each path: iperf3's TCP
throughput (received), the mean TCP RTT iperf3 saw under that load (from TCP_INFO), and
the idle round trip of ICMP echo (busybox ping); then overlay / underlay ratios.
Needs root, iperf3 and busybox-static (scripts/setup.sh installs both).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.overlay_checks import meshed, overlay_of  # noqa: E402
from tests.devcluster import DevCluster, wait_until  # noqa: E402

PORT = 5201


def iperf(c: DevCluster, target: str, seconds: int) -> tuple[float, float]:
    """(received bits/s, mean TCP RTT in ms) from node1 to target."""
    p = c.exec(
        "node1",
        "iperf3",
        "-c",
        target,
        "-p",
        str(PORT),
        "-t",
        str(seconds),
        "-J",
        timeout=seconds + 60,
    )
    data = json.loads(p.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3 to {target}: {data['error']}")
    end = data["end"]
    rtts = [s["sender"].get("mean_rtt", 0) for s in end.get("streams", [])]
    return end["sum_received"]["bits_per_second"], statistics.mean(rtts) / 1000 if rtts else 0.0


def ping(c: DevCluster, target: str, count: int) -> float:
    """Mean ICMP round trip in ms (busybox ping)."""
    busybox = shutil.which("busybox") or "busybox"
    p = c.exec(
        "node1", busybox, "ping", "-c", str(count), "-i", "0.1", "-q", target, timeout=count + 30
    )
    m = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", p.stdout)
    if not m:
        raise RuntimeError(f"ping {target}: {p.stdout}{p.stderr}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 duration per path")
    ap.add_argument("--pings", type=int, default=50)
    args = ap.parse_args()
    for tool in ("iperf3", "wireguard-go"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (run scripts/setup.sh)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="kat-bench-overlay-") as tmp:
        with DevCluster(2, Path(tmp) / "cluster", extra_up_args=["--no-images"]) as c:
            names = wait_until(lambda: len(c.ready_nodes()) == 2 and c.ready_nodes(), 60)
            wait_until(lambda: meshed(c, names), timeout=60, what="overlay handshakes")
            n2 = c.node("node2")
            by_address = {
                n["status"]["advertiseAddress"]: n["metadata"]["name"] for n in c.nodes_json()
            }
            overlay_addr = overlay_of(c)[by_address[n2["address"]]]["address"]
            paths = {"underlay": n2["address"], "overlay": overlay_addr}
            server = c.popen("node2", "iperf3", "-s", "-p", str(PORT))
            try:
                wait_until(
                    lambda: (
                        c.exec("node2", "sh", "-c", f"ss -ltn | grep -q :{PORT}").returncode == 0
                    ),
                    timeout=10,
                )
                results = {}
                for label, addr in paths.items():
                    bps, rtt = iperf(c, addr, args.seconds)
                    results[label] = (bps, rtt, ping(c, addr, args.pings))
            finally:
                server.kill()
                server.wait(timeout=10)
            mtu = overlay_of(c)[names[0]].get("mtu")
            backend = overlay_of(c)[names[0]].get("backend")
    print(
        f"2 dev-cluster nodes, {args.seconds}s iperf3 TCP per path, {args.pings} pings; "
        f"overlay: {backend}, mtu {mtu}"
    )
    print(f"{'path':<10} {'address':<16} {'throughput':>14} {'TCP RTT':>10} {'ping RTT':>10}")
    for label, (bps, rtt, icmp) in results.items():
        print(
            f"{label:<10} {paths[label]:<16} {bps / 1e6:>9.0f} Mbit/s {rtt:>7.3f} ms "
            f"{icmp:>7.3f} ms"
        )
    (ob, ort, oi), (ub, urt, ui) = results["overlay"], results["underlay"]
    print(
        f"ratio overlay/underlay: throughput {ob / ub:.2f}, TCP RTT {ort / urt:.2f}, "
        f"ping RTT {oi / ui:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
