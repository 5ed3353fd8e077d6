"""`katcall logs --previous` and `katcall top` on a real one-node dev cluster: the real
katcall against a real agent whose containers run on real Podman. The container is killed
behind KAT's back (`podman kill`), KAT restarts it, and the previous container's output is
still there; top shows Podman's cpu and memory figures against the workload's requests
and limits."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

NAME = "spin"
# Each run prints a line of its own and one on stderr, then spins (cpu for top) under a
# 200m limit.
SPEC = """apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {name: spin}
spec:
  type: SERVICE
  source:
    image: registry.kat.local/busybox:latest
  replicas: 1
  restartPolicy:
    condition: ALWAYS
  container:
    command: [sh, -c, 'echo "started $RANDOM$RANDOM"; echo oops >&2; while :; do :; done']
    resources:
      requests: {cpu: 100m, memory: 16Mi}
      limits: {cpu: 200m, memory: 32Mi}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(1, tmp_path_factory.mktemp("nv") / "cluster") as c:
        yield c


def instance(c: DevCluster) -> dict:
    p = c.katcall("get", "instances", "-o", "json", timeout=30)
    assert p.returncode == 0, p.stderr
    found = [i for i in json.loads(p.stdout)["items"] if i["workload"] == NAME]
    return found[0] if found else {}


def started_line(text: str) -> str:
    m = re.search(r"started \d+", text)
    return m[0] if m else ""


def test_top_and_logs_previous_after_a_restart(cluster: DevCluster, tmp_path: Path) -> None:
    b = tmp_path / "spin"
    b.mkdir()
    (b / "workload.kat").write_text(SPEC)
    cluster.katcall("apply", "-f", str(b), "--wait", "--timeout", "3m", check=True, timeout=200)
    try:
        inst = instance(cluster)
        iid = inst["id"]

        none = cluster.katcall("logs", NAME, "--previous", timeout=30)
        assert none.returncode == 1 and "has no previous container" in none.stderr, none

        # top instances: Podman's figures against the workload's requests and limits
        def sampled() -> list[str]:
            p = cluster.katcall("top", "instances", timeout=60)
            assert p.returncode == 0, p.stderr
            lines = p.stdout.splitlines()
            assert lines[0].split() == [
                "NAME", "WORKLOAD", "NODE", "CPU", "CPU/REQ", "CPU/LIM",
                "MEMORY", "MEM/REQ", "MEM/LIM",
            ]  # fmt: skip
            row = next((line.split() for line in lines[1:] if line.startswith(iid)), [])
            return row if row and row[3] != "0" else []

        row = wait_until(sampled, timeout=60, interval=1, what="a cpu figure from top")
        assert row[1] == NAME and row[2] == inst["node"]
        cpu = int(row[3].removesuffix("m")) if row[3].endswith("m") else int(row[3]) * 1000
        assert 10 <= cpu <= 260, row  # spinning under a 200m limit (a loaded machine: less)
        assert row[4].endswith("%") and row[5].endswith("%") and row[7].endswith("%"), row
        assert row[6] != "0", row
        doc = json.loads(cluster.katcall("top", "instances", "-o", "json", check=True).stdout)
        mine = next(s for s in doc["items"] if s["instanceId"] == iid)
        assert int(mine["memoryBytes"]) > 0 and mine["node"] == inst["node"]

        nodes = cluster.katcall("top", "nodes", timeout=60)
        assert nodes.returncode == 0, nodes.stderr
        lines = nodes.stdout.splitlines()
        assert lines[0].split()[:3] == ["NAME", "CPU", "CPU%"]
        node_row = next(line.split() for line in lines[1:] if line.startswith(inst["node"]))
        assert node_row[-1] == "1" and node_row[3] == "100m", node_row

        first = wait_until(
            lambda: started_line(cluster.katcall("logs", NAME, "--instance", iid).stdout),
            timeout=30,
            what="the first run's line",
        )

        # the container dies behind KAT's back; KAT restarts it
        node = cluster.state()["nodes"][0]["key"]
        sock = Path(cluster.node(node)["data_dir"]) / "agent" / "podman" / "podman.sock"
        url = f"unix://{sock}"
        podman = ("podman", "--remote", "--url", url)
        cluster.exec(node, *podman, "kill", inst["containerId"], check=True)

        def restarted() -> bool:
            now = instance(cluster)
            return (
                now.get("restartCount", 0) >= 1
                and now.get("phase") == "RUNNING"
                and now.get("containerId") != inst["containerId"]
            )

        wait_until(restarted, timeout=90, interval=0.5, what="the killed container restarted")

        prev = cluster.katcall("logs", NAME, "--instance", iid, "--previous", timeout=30)
        assert prev.returncode == 0, prev.stderr
        assert started_line(prev.stdout) == first and "oops" in prev.stderr, prev
        assert "oops" not in prev.stdout

        current = wait_until(
            lambda: started_line(cluster.katcall("logs", NAME, "--instance", iid).stdout),
            timeout=30,
            what="the new run's line",
        )
        assert current != first

        every = cluster.katcall("logs", NAME, "--previous", "--all-instances", timeout=30)
        assert every.returncode == 0 and f"[{iid}] {first}" in every.stdout, every
        stamped = cluster.katcall("logs", NAME, "--previous", "--timestamps", "--tail", "2")
        assert stamped.returncode == 0
        assert re.match(rf"\[{iid}\] 20\d\d-\d\d-\d\dT\S+ ", stamped.stdout), stamped.stdout
        both = cluster.katcall("logs", NAME, "--instance", iid, "--all-instances")
        assert both.returncode == 2 and "not both" in both.stderr
    finally:
        cluster.katcall("delete", "workload", NAME, timeout=60)
