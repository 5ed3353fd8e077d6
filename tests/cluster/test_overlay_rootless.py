"""Rootless instances on the overlay (`dev-cluster up --rootless`): each examples/web
instance runs as its workload user, in the network namespace its rootless Podman made;
the root agent gives it an overlay address from the node's subnet, and every instance
reaches every instance on another node through WireGuard. Addresses survive an agent
restart and are released when the instances go."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.overlay_checks import (
    WEB_PORT,
    Capture,
    all_pairs,
    instances,
    meshed,
    reaches,
    reaches_ip,
    wait_meshed,
    web_running,
)
from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = [
    pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or ""),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go missing"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(
        3,
        tmp_path_factory.mktemp("ovr") / "cluster",
        # a long node loss timeout: the restarted agent's instance must not move meanwhile
        extra_up_args=["--rootless", "--node-loss-timeout", "60"],
    ) as c:
        wait_meshed(c)
        yield c
        c.katcall("delete", "workload", "web", timeout=60)


def _allocations(c: DevCluster, key: str) -> dict[str, str]:
    path = Path(c.node(key)["data_dir"]) / "agent" / "instance-addresses.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_rootless_instances_get_overlay_addresses_and_reach_all_pairs(
    cluster: DevCluster,
) -> None:
    insts = web_running(cluster)
    for i in insts:
        # an address of its node's subnet, not slirp4netns' 10.0.2.x
        assert i["ip"].startswith("10.100."), i
    plain = Capture(cluster, f"tcp port {WEB_PORT}")
    tunnel = Capture(cluster, "udp port 51820")
    try:
        answered = all_pairs(cluster, insts)
    finally:
        plain_packets, tunnel_packets = plain.stop(), tunnel.stop()
    assert len(answered) == 6 and all(answered.values()), answered
    assert plain_packets == 0, "plain TCP to the instances' port crossed the bridge"
    assert tunnel_packets > 0


def test_agent_restart_keeps_rootless_addresses(cluster: DevCluster) -> None:
    insts = {i["node"]: i for i in web_running(cluster)}
    names = sorted(insts)
    victim = cluster.node(names[1])["key"]
    before = _allocations(cluster, victim)
    assert insts[names[1]]["id"] in before
    cluster.kill(victim)
    assert reaches_ip(cluster, names[0], insts[names[1]]["ip"])
    cluster.start(victim)
    wait_until(lambda: names[1] in cluster.ready_nodes(), timeout=60)
    wait_until(lambda: meshed(cluster, names), timeout=30)
    assert insts[names[1]]["id"] in _allocations(cluster, victim)
    assert reaches(cluster, names[0], names[1])


def test_addresses_are_released_when_instances_go(cluster: DevCluster) -> None:
    web_running(cluster)
    p = cluster.katcall("delete", "workload", "web", timeout=60)
    assert p.returncode == 0, p.stderr
    wait_until(lambda: not instances(cluster), timeout=90, what="web instances gone")
    keys = [n["key"] for n in cluster.state()["nodes"]]
    wait_until(
        lambda: all(not _allocations(cluster, k) for k in keys),
        timeout=30,
        what="every overlay address released",
    )
