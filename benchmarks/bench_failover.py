"""Seconds from killing the leader's node to the first API call served, on a
real 3-member dev cluster (scripts/dev-cluster), median of several runs.

    python3 benchmarks/bench_failover.py [--runs 5]

Each run SIGKILLs the current leader's agent (and with it its etcd), polls
`katcall get nodes` with the unchanged config until it answers, then restarts
the killed node and waits until all three nodes are READY again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.devcluster import DevCluster, wait_until  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kat-failover-") as tmp:
        with DevCluster(3, Path(tmp) / "c", etcd_members=3) as c:
            c.katcall("get", "nodes", check=True)  # learn every endpoint
            times = []
            for run in range(a.runs):
                nodes = c.nodes_json()
                leader = next(n for n in nodes if n["status"].get("leader"))["metadata"]["name"]
                key = c.node(leader)["key"]
                c.kill(key)
                t0 = time.monotonic()
                wait_until(
                    lambda: c.katcall("get", "nodes", timeout=20).returncode == 0,
                    timeout=60,
                    interval=0.1,
                    what="API answer",
                )
                took = time.monotonic() - t0
                times.append(took)
                print(f"run {run + 1}: leader {leader} killed, API served after {took:.2f} s")
                c.start(key)
                wait_until(lambda: len(c.ready_nodes()) == 3, timeout=90, what="all READY")
    print(
        f"failover (kill leader -> first served API call), {a.runs} runs: "
        f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
