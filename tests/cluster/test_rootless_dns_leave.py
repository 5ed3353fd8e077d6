"""Rootless instances (`dev-cluster up --rootless`) use the node's KAT DNS: their
resolv.conf names it with the cluster search path, the service name answers exactly the
ready instances, and `wget` by name answers from every node, also across nodes. A node
removed from the cluster takes away what its agent made (the kat0 bridge, the instance
veths and their routes, the nftables table, the WireGuard interface) and a restart of its
agent does not make them again; a restart of a member's agent keeps them (adopted)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kat_agent.node.network.records import node_dns_address
from tests.cluster.overlay_checks import wait_meshed, web_running
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
        tmp_path_factory.mktemp("rdns") / "cluster",
        extra_up_args=["--rootless", "--node-loss-timeout", "60"],
    ) as c:
        wait_meshed(c)
        yield c


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
    links = c.exec(key, "ip", "-o", "link", "show").stdout
    names = [ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines()]
    ours = [n for n in names if n == "kat0" or n.startswith(("kv", "kat"))]
    routes = [r for r in c.exec(key, "ip", "route").stdout.splitlines() if " dev kat" in r]
    tables = [t for t in c.exec(key, "nft", "list", "tables").stdout.splitlines() if "kat_" in t]
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
    log = Path(victim["data_dir"]) / "agent.log"
    done = "left the cluster: bridge kat0 and the instance veths removed"
    seen = log.read_text(errors="replace").count(done)
    assert seen >= 1
    c.kill(key)
    c.start(key)
    wait_until(
        lambda: log.read_text(errors="replace").count(done) > seen,
        timeout=60,
        what="the restarted agent's cleanup",
    )
    assert kat_made(c, key) == empty
