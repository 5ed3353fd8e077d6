"""The leader's service view (WatchEndpoints) with a real leader and simulated agents: it
lists exactly the ready instances with their addresses and named ports, and every node
hears within a second when an instance stops being ready."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from tests.leader_harness import Behavior, Bundle, Leader, SimNet, poll, service

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None or shutil.which("kat-agent") is None,
    reason="needs etcd and kat-agent on PATH (scripts/setup.sh)",
)

VLB = """apiVersion: kat.dws.rip/v1alpha1
kind: VirtualLoadBalancer
metadata: {name: dnsweb}
spec:
  ports: [{name: http, containerPort: 8080}]
  ingress: [{host: web.kat.local, path: /, servicePortName: http}]
"""


@pytest.fixture(scope="module")
def leader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leader]:
    with Leader(tmp_path_factory.mktemp("ep") / "cluster", tick=1, loss=3) as lead:
        yield lead


def served(view: kat_pb2.EndpointSet) -> list[kat_pb2.Endpoint]:
    for s in view.services:
        if s.workload == "dnsweb":
            return list(s.endpoints)
    return []


def test_view_follows_readiness_within_a_second(leader: Leader, tmp_path: Path) -> None:
    net = SimNet(leader)
    try:
        agents = [net.add("ep-a"), net.add("ep-b")]
        net.world.behaviors["dnsweb"] = Behavior(ready_after=0.2)
        files = {"workload.kat": service("dnsweb", replicas=2), "VirtualLoadBalancer.kat": VLB}
        p = leader.katcall("apply", "-f", str(Bundle(tmp_path / "b", files).write()))
        assert p.returncode == 0, p.stderr

        def both_ready() -> bool:
            return all(a.views and len(served(a.views[-1][1])) == 2 for a in agents)

        poll(both_ready, within=30, what="2 ready endpoints on every node")
        view = agents[0].views[-1][1]
        (svc,) = [s for s in view.services if s.workload == "dnsweb"]
        assert all(e.ip.startswith("10.100.") for e in svc.endpoints)
        assert svc.ports[0].name == "http" and svc.ingress[0].host == "web.kat.local"
        running = {r.id: r.ip for r in net.world.running("dnsweb")}
        assert {e.instance_id: e.ip for e in svc.endpoints} == running

        # Every instance fails its health checks from now on.
        went = time.monotonic()
        net.world.behaviors["dnsweb"] = Behavior(ready_after=0.2, unready_after=0.0)

        def emptied(agent: object) -> float | None:
            for at, v in agent.views:  # type: ignore[attr-defined]
                if at >= went and not served(v):
                    return at - went
            return None

        poll(lambda: all(emptied(a) is not None for a in agents), within=10, what="no endpoints")
        delays = [emptied(a) for a in agents]
        assert all(d is not None and d < 1.0 for d in delays), delays
    finally:
        net.close()
