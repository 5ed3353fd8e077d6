"""Cluster DNS and ingress on a real 3-node dev cluster (root-mode Podman, the `kat` bridge
on every node): every agent answers the cluster zone on its subnet's first address for its
containers, from the leader's ready endpoints, and keeps answering without a leader; a node
labelled kat.dws.rip/ingress=true proxies examples/web's ingress rule through HAProxy."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kat_agent.node.network.records import node_dns_address
from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "kat.cluster.local"
NAME = f"web.default.svc.{DOMAIN}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(3, tmp_path_factory.mktemp("dns") / "cluster") as c:
        yield c


def web_bundle(dest: Path, replicas: int = 3, selector: str = "") -> Path:
    """examples/web with `replicas` (and a nodeSelector line). On a machine this loaded a
    `podman exec` health check can take seconds: lenient checks keep instances from
    flapping unready, which is not what these tests are about."""
    bundle = dest / "web"
    shutil.copytree(REPO / "examples" / "web", bundle, dirs_exist_ok=True)
    wl = bundle / "workload.kat"
    text = wl.read_text().replace("replicas: 3", f"replicas: {replicas}")
    if selector:
        text = text.replace("  type: SERVICE\n", f"  type: SERVICE\n  nodeSelector: {selector}\n")
    wl.write_text(text)
    vlb = bundle / "VirtualLoadBalancer.kat"
    vlb.write_text(
        vlb.read_text()
        .replace("timeoutSeconds: 2", "timeoutSeconds: 5")
        .replace("failureThreshold: 3", "failureThreshold: 10")
    )
    return bundle


def instances(c: DevCluster) -> list[dict]:
    p = c.katcall("get", "instances", "-o", "json", timeout=30)
    assert p.returncode == 0, p.stderr
    return [i for i in json.loads(p.stdout)["items"] if i["workload"] == "web"]


def ready_ips(c: DevCluster) -> set[str]:
    return {i["ip"] for i in instances(c) if i.get("phase") == "RUNNING" and i.get("ready")}


_ADDRESS = re.compile(r"^Address:\s*(\d+\.\d+\.\d+\.\d+)\s*$", re.M)  # not "server:53"


def addresses(nslookup_output: str) -> set[str]:
    return set(_ADDRESS.findall(nslookup_output))


def node_dns(c: DevCluster, key: str) -> str:
    """A node's DNS address: the first host address of its subnet."""
    name = c.node(key)["name"]
    node = next(n for n in c.nodes_json() if n["metadata"]["name"] == name)
    return node_dns_address(node["status"]["subnet"])


def lookup_on_node(c: DevCluster, key: str, server: str, name: str = NAME) -> str:
    """nslookup against the node's DNS from inside the node's namespace."""
    p = c.exec(key, "busybox", "nslookup", "-type=a", name, server, timeout=10)
    return p.stdout + p.stderr


def lookup_in(c: DevCluster, instance: str, name: str = NAME, *opts: str) -> str:
    p = c.katcall("exec", "web", "--instance", instance, "--", "nslookup", *opts, name, timeout=20)
    return p.stdout + p.stderr


def test_every_node_answers_exactly_the_ready_instances(
    cluster: DevCluster, tmp_path: Path
) -> None:
    c = cluster
    p = c.katcall("apply", "-f", str(web_bundle(tmp_path)), "--wait", timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    nodes = {i["node"] for i in instances(c)}

    def check_from_node(node: str) -> bool:
        """One round of checks from a ready instance on `node` (health checks can flap on
        a loaded machine: the round is retried with whatever is ready then)."""
        before = ready_ips(c)
        here = [i for i in instances(c) if i["node"] == node and i.get("ready")]
        if not here or len(before) != 3:
            return False
        inst = here[0]
        resolv = c.katcall("exec", "web", "--instance", inst["id"], "--", "cat", "/etc/resolv.conf")
        assert resolv.returncode != 0 or (
            "search default.svc.kat.cluster.local svc.kat.cluster.local" in resolv.stdout
        ), resolv.stdout
        got = addresses(lookup_in(c, inst["id"], NAME, "-type=a"))
        if got != before or ready_ips(c) != before:
            return False
        # The instance's own name answers only that instance, and the service answers
        # over it (a local instance: cross-node traffic is the overlay's business).
        own = f"{inst['id']}.{NAME}"
        assert addresses(lookup_in(c, inst["id"], own)) == {inst["ip"]}
        fetch = c.katcall(
            "exec", "web", "--instance", inst["id"], "--",
            "timeout", "5", "wget", "-q", "-O", "-", f"http://{own}:8080/", timeout=20,
        )  # fmt: skip
        assert "hello from" in fetch.stdout, fetch.stdout + fetch.stderr
        srv = lookup_in(c, inst["id"], f"_http._tcp.{NAME}", "-type=srv")
        assert srv.count(" 8080 ") == 3, srv
        missing = lookup_in(c, inst["id"], f"nope.default.svc.{DOMAIN}", "-type=a")
        assert "NXDOMAIN" in missing, missing
        return True

    for node in sorted(nodes):
        wait_until(lambda node=node: check_from_node(node), timeout=90, what=f"DNS from {node}")


def test_scale_down_reaches_every_node_within_5s(cluster: DevCluster, tmp_path: Path) -> None:
    c = cluster
    keys = [n["key"] for n in c.state()["nodes"]]
    servers = {k: node_dns(c, k) for k in keys}
    bundle = web_bundle(tmp_path, replicas=1)
    p = c.katcall("apply", "-f", str(bundle), timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    applied = time.monotonic()

    def every_node_at_most_one() -> bool:
        # At most one: on a loaded machine the remaining instance's health check may flap,
        # and then the right answer is none. That it is exactly the ready one is below.
        return all(len(addresses(lookup_on_node(c, k, servers[k]))) <= 1 for k in keys)

    wait_until(every_node_at_most_one, timeout=5, interval=0.1, what="at most one address")
    took = time.monotonic() - applied
    assert took < 5, f"took {took:.1f}s"
    remaining = wait_until(lambda: ready_ips(c) if len(ready_ips(c)) == 1 else None, timeout=30)
    for k in keys:
        assert addresses(lookup_on_node(c, k, servers[k])) == remaining


INGRESS = "kat.dws.rip/ingress"


def http_get(address: str, host: str = "web.kat.local", port: int = 80) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{address}:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_ingress_node_spreads_requests_and_survives_a_rolling_update(
    cluster: DevCluster, tmp_path: Path
) -> None:
    c = cluster
    node = c.node("node2")
    address = node["address"]
    p = c.katcall("label", "node", node["name"], f"{INGRESS}=true")
    assert p.returncode == 0, p.stderr
    labels = next(n for n in c.nodes_json() if n["metadata"]["name"] == node["name"])
    assert labels["metadata"]["labels"][INGRESS] == "true"
    # Until the overlay routes between nodes, the ingress node reaches only its own
    # instances: all three copies run there.
    bundle = web_bundle(tmp_path, replicas=3, selector=f"{{{INGRESS}: 'true'}}")
    wl = bundle / "workload.kat"
    p = c.katcall("apply", "-f", str(bundle), "--wait", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    wait_until(lambda: http_get(address)[0] == 200, timeout=30, what="ingress answers")
    answers = [http_get(address) for _ in range(20)]
    assert all(code == 200 for code, _ in answers), answers
    assert len({body for _, body in answers}) > 1, answers
    assert http_get(address, host="nobody.kat.local")[0] == 404

    # A rolling update (new env: new containers, one at a time) under steady load.
    failures: list[str] = []
    done = threading.Event()
    sent = 0

    def load() -> None:
        nonlocal sent
        while not done.is_set():
            try:
                code, _ = http_get(address)
                if code != 200:
                    failures.append(f"HTTP {code}")
            except OSError as e:
                failures.append(repr(e))
            sent += 1

    t = threading.Thread(target=load)
    t.start()
    try:
        wl.write_text(wl.read_text().replace("value: hello", "value: hello-v2"))
        p = c.katcall("apply", "-f", str(bundle), "--wait", timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        done.set()
        t.join()
    assert sent > 20 and not failures, f"{len(failures)} of {sent} failed: {failures[:5]}"

    # Unlabelled: the node stops proxying.
    p = c.katcall("label", "node", node["name"], f"{INGRESS}-")
    assert p.returncode == 0, p.stderr
    wait_until(lambda: _refused(address), timeout=20, what="ingress stopped")


def _refused(address: str) -> bool:
    try:
        http_get(address)
    except OSError:
        return True
    return False


def test_nodes_keep_answering_while_the_leader_is_down(cluster: DevCluster) -> None:
    c = cluster
    want = wait_until(lambda: ready_ips(c), timeout=30)
    others = [n["key"] for n in c.state()["nodes"]][1:]
    servers = {k: node_dns(c, k) for k in others}
    c.kill("node1")  # the only etcd member: no leader at all from now on
    try:
        for k in others:
            wait_until(
                lambda k=k: addresses(lookup_on_node(c, k, servers[k])) == want,
                timeout=15,
                what=f"{k}'s DNS without a leader",
            )
        # and they keep doing so
        for k in others:
            assert addresses(lookup_on_node(c, k, servers[k])) == want
    finally:
        c.start("node1")
