"""Apply to RUNNING on a real dev cluster, against a plain `podman run`.

    python3 benchmarks/bench_apply.py [--runs 10] [--replicas 30]
    python3 benchmarks/bench_apply.py --rootless [--runs 7]

`--rootless`: a 1-node rootless dev cluster, fresh workload users against bare rootless
`podman run -d` as fresh users, plus a 200 MB image; see benchmarks/rootless_apply.py.
Its last line is `ratio=R driver=D`. `--spares 0` turns the node's spare workload users
off (kat_agent/node/podman/spares.py), to compare.

1. A 1-replica service (busybox `sleep`, image already on the node) is applied
   through the real API and timed until its instance is RUNNING; deleted and
   applied again, `--runs` times. In the same run, a plain `podman run -d` of the
   same image with the same node's storage is timed the same number of times.
   Figures: medians and their ratio (target: under 1.8).
2. A 30-replica service on 3 nodes: apply until all 30 are RUNNING.

Times are taken in-process from the Apply call to the status showing RUNNING
(katcall's own start-up, ~0.3 s of Python imports, is left out).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.v1alpha1 import kat_pb2  # noqa: E402
from internal.manifests import bundle
from internal.security import clientconfig
from katcall.client import Client  # noqa: E402
from tests.devcluster import DevCluster, wait_until  # noqa: E402

IMAGE = "registry.kat.local/busybox:latest"


def service(name: str, replicas: int, image: str = IMAGE) -> bytes:
    workload = f"""apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {{name: {name}}}
spec:
  type: SERVICE
  source: {{image: "{image}"}}
  replicas: {replicas}
  container:
    name: {name}
    command: [sleep, "3600"]
    resources:
      requests: {{cpu: 10m, memory: 8Mi}}
"""
    return bundle.pack_files({"workload.kat": workload.encode()})


def running(client: Client, name: str, want: int) -> bool:
    items = client.list_instances(
        kat_pb2.ListInstancesRequest(namespace="default", workload=name)
    ).items
    return sum(1 for i in items if i.phase == kat_pb2.Instance.RUNNING) >= want


def apply_until_running(
    client: Client, name: str, replicas: int, *, image: str = IMAGE, timeout: float = 120
) -> float:
    data = service(name, replicas, image)
    t0 = time.perf_counter()
    client.apply(kat_pb2.ApplyRequest(bundle=data))
    wait_until(lambda: running(client, name, replicas), timeout=timeout, interval=0.01, what=name)
    return time.perf_counter() - t0


def delete(client: Client, c: DevCluster, name: str) -> None:
    client.delete_workload(kat_pb2.DeleteWorkloadRequest(namespace="default", name=name))
    wait_until(
        lambda: (
            not client.list_instances(
                kat_pb2.ListInstancesRequest(namespace="default", workload=name)
            ).items
        ),
        timeout=60,
        what=f"{name} gone",
    )


def plain_podman_run(c: DevCluster, node: str) -> float:
    """`podman run -d` of the same image with the node's own storage and network."""
    from benchmarks.rootless_apply import node_podman_flags

    flags = node_podman_flags(c, node)
    t0 = time.perf_counter()
    p = c.exec(node, "podman", *flags, "run", "-d", IMAGE, "sleep", "3600", check=True)
    took = time.perf_counter() - t0
    c.exec(node, "podman", *flags, "rm", "-f", "-t", "0", p.stdout.strip())
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--replicas", type=int, default=30)
    ap.add_argument("--rootless", action="store_true", help="rootless workloads (see above)")
    ap.add_argument(
        "--spares",
        type=int,
        default=1,
        help="--rootless: spare workload users the node keeps (KAT_SPARE_WORKLOAD_USERS; "
        "0: every new workload makes its user and starts its service, as before)",
    )
    a = ap.parse_args()
    if a.rootless:
        os.environ["KAT_SPARE_WORKLOAD_USERS"] = str(a.spares)
        return main_rootless(a.runs, a.spares)
    out = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="kat-apply-") as tmp:
        with DevCluster(3, Path(tmp) / "c") as c:
            assert c.katconfig is not None
            client = Client(clientconfig.load(c.katconfig).context())
            # one node only for the 1-replica runs, so the image is cached after the first
            names = [n["metadata"]["name"] for n in c.nodes_json()]
            only = c.node("node1")["name"]
            for n in names:
                if n != only:
                    client.cordon_node(kat_pb2.NodeRequest(name=n))
            apply_until_running(client, "warm", 1)  # pulls the image once
            delete(client, c, "warm")
            kat, plain = [], []
            for i in range(a.runs):
                kat.append(apply_until_running(client, f"one{i}", 1))
                delete(client, c, f"one{i}")
                plain.append(plain_podman_run(c, "node1"))
            mk, mp = statistics.median(kat), statistics.median(plain)
            print(
                f"apply 1-replica service to RUNNING: median {mk:.3f} s over {a.runs} runs; "
                f"plain podman run -d: median {mp:.3f} s; ratio {mk / mp:.2f} (target < 1.8)",
                file=out,
            )
            for n in names:
                client.uncordon_node(kat_pb2.NodeRequest(name=n))
            took = apply_until_running(client, "many", a.replicas)
            nodes_used = {
                i.node
                for i in client.list_instances(
                    kat_pb2.ListInstancesRequest(namespace="default", workload="many"),
                ).items
            }
            print(
                f"apply {a.replicas} replicas on 3 nodes to all RUNNING: {took:.2f} s "
                f"(on {len(nodes_used)} nodes, first pull on two of them included)",
                file=out,
            )
            client.close()
    print(out.getvalue(), end="")
    return 0


def main_rootless(runs: int, spares: int) -> int:
    from benchmarks import rootless_apply

    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kat-apply-rl-") as tmp:
        with DevCluster(1, Path(tmp) / "c", extra_up_args=["--rootless"]) as c:
            assert c.katconfig is not None
            client = Client(clientconfig.load(c.katconfig).context())
            try:
                last = rootless_apply.run(c, client, IMAGE, runs, lines, spares)
            finally:
                client.close()
                print("\n".join(lines))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
