"""Rootless instances on the overlay and on KAT's DNS (`dev-cluster up --rootless`), on one
3-node cluster (its set-up is the slow part).

Overlay: each examples/web instance runs as its workload user, in the network namespace its
rootless Podman made; the root agent gives it an overlay address from the node's subnet, and
every instance reaches every instance on another node through WireGuard. Addresses survive an
agent restart and are released when the instances go.

DNS and leave: their resolv.conf names the node's KAT DNS with the cluster search path, the
service name answers exactly the ready instances, and `wget` by name answers from every node,
also across nodes. A node removed from the cluster takes away what its agent made (the kat0
bridge, the instance veths and their routes, the nftables table, the WireGuard interface) and
a restart of its agent does not make them again; a restart of a member's agent keeps them
(adopted). The removal is the module's last test: it changes the cluster's shape."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kat_agent.node.network.records import node_dns_address
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
from tests.cluster.test_dns_ingress import NAME, addresses, by_name_from_every_instance
from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = [
    pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or ""),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go missing"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(
        3,
        tmp_path_factory.mktemp("rootless") / "cluster",
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


def exec_in(c: DevCluster, instance: str, *cmd: str) -> str:
    p = c.katcall("exec", "web", "--instance", instance, "--", *cmd, timeout=30)
    return p.stdout + p.stderr


def test_rootless_instances_resolve_and_reach_service_names(cluster: DevCluster) -> None:
    c = cluster
    insts = web_running(c)
    ips = {i["ip"] for i in insts}
    for i in insts:
        node = next(n for n in c.nodes_json() if n["metadata"]["name"] == i["node"])
        dns = node_dns_address(node["status"]["subnet"])
        resolv = exec_in(c, i["id"], "cat", "/etc/resolv.conf")
        assert "search default.svc.kat.cluster.local svc.kat.cluster.local" in resolv, resolv
        assert f"nameserver {dns}\n" in resolv and "10.0.2.3" not in resolv, resolv
        got = wait_until(
            lambda i=i: addresses(exec_in(c, i["id"], "nslookup", "-type=a", NAME)) == ips,
            timeout=30,
            what=f"{NAME} from {i['id']}",
        )
        assert got
        missing = exec_in(c, i["id"], "nslookup", "-type=a", f"nope.default.svc.{NAME[12:]}")
        assert "NXDOMAIN" in missing, missing
    answered = wait_until(
        lambda: by_name_from_every_instance(c), timeout=120, what="wget by name everywhere"
    )
    assert len(answered) == 9 and all(answered.values()), answered


def kat_made(c: DevCluster, key: str) -> dict[str, list[str]]:
    """What KAT made in node `key`'s namespace: links (kat0, kv*, the WireGuard
    interface), routes through them, and its nftables table."""
    # check=True: a failed look must not read as "nothing there".
    links = c.exec(key, "ip", "-o", "link", "show", check=True).stdout
    names = [ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines()]
    ours = [n for n in names if n == "kat0" or n.startswith(("kv", "kat"))]
    routed = c.exec(key, "ip", "route", check=True).stdout.splitlines()
    routes = [r for r in routed if " dev kat" in r]
    listed = c.exec(key, "nft", "list", "tables", check=True).stdout.splitlines()
    tables = [t for t in listed if "kat_" in t]
    return {"links": ours, "routes": routes, "tables": tables}


def test_agent_restart_keeps_and_removal_takes_away_what_kat_made(cluster: DevCluster) -> None:
    c = cluster
    insts = {i["node"]: i for i in web_running(c)}
    leader = c.node("node1")["name"]
    victim = c.node(next(n for n in sorted(insts) if n != leader))
    key = victim["key"]
    before = kat_made(c, key)
    assert "kat0" in before["links"] and any(n.startswith("kv") for n in before["links"])
    assert before["routes"] and before["tables"], before

    # A restart re-adopts everything (idempotent): the same links, routes and table.
    c.kill(key)
    c.start(key)
    wait_until(lambda: victim["name"] in c.ready_nodes(), timeout=60, what="agent back")
    wait_until(lambda: kat_made(c, key) == before, timeout=30, what="same network parts")

    # Removed from the cluster: all of it goes.
    p = c.katcall("node", "remove", victim["name"])
    assert p.returncode == 0, p.stderr
    empty = {"links": [], "routes": [], "tables": []}
    wait_until(lambda: kat_made(c, key) == empty, timeout=60, what="KAT's network parts removed")
    # ... and a restarted agent of the removed node does not make them again: once it
    # has run its (idempotent) cleanup at start, nothing is there.
    # The agent logs its cleanup once the last part (the bridge) is gone, so the line
    # can come a moment after the parts are seen gone: poll for it.
    log = Path(victim["data_dir"]) / "agent.log"
    done = "left the cluster: bridge kat0 and the instance veths removed"
    seen = wait_until(
        lambda: log.read_text(errors="replace").count(done),
        timeout=30,
        what="the removed node's cleanup logged",
    )
    assert "removing bridge kat0 and the instance veths failed" not in log.read_text(
        errors="replace"
    )
    c.kill(key)
    c.start(key)
    wait_until(
        lambda: log.read_text(errors="replace").count(done) > seen,
        timeout=60,
        what="the restarted agent's cleanup",
    )
    assert kat_made(c, key) == empty
