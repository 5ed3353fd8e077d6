"""Cluster DNS and ingress on a real 3-node dev cluster (root-mode Podman, the `kat` bridge
on every node): every agent answers the cluster zone on its subnet's first address for its
containers, from the leader's ready endpoints, and keeps answering without a leader; a node
labelled kat.dws.rip/ingress=true proxies examples/web's ingress rule through HAProxy."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
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


def test_service_name_answers_from_every_node_across_nodes(
    cluster: DevCluster, tmp_path: Path
) -> None:
    """wget by the service name from an instance on every node, and by each instance's
    own name to every instance on another node (the overlay, found through DNS)."""
    c = cluster  # right after the first test: its 3 instances run on the 3 nodes
    p = c.katcall("apply", "-f", str(web_bundle(tmp_path)), "--wait", timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    answered = wait_until(
        lambda: by_name_from_every_instance(c), timeout=120, what="wget by name everywhere"
    )
    assert len(answered) == 9 and all(answered.values()), answered


def by_name_from_every_instance(c: DevCluster) -> dict[tuple[str, str], bool] | None:
    """(from, to) -> answered, for to = the service and every instance's own name; None
    until 3 instances on 3 nodes are ready (a health check may flap on a loaded machine)."""
    ready = [i for i in instances(c) if i.get("phase") == "RUNNING" and i.get("ready")]
    if len(ready) != 3 or len({i["node"] for i in ready}) != 3:
        return None
    out: dict[tuple[str, str], bool] = {}
    for src in ready:
        for name in [NAME] + [f"{i['id']}.{NAME}" for i in ready if i["node"] != src["node"]]:
            p = c.katcall(
                "exec", "web", "--instance", src["id"], "--",
                "timeout", "5", "wget", "-q", "-O", "-", f"http://{name}:8080/", timeout=30,
            )  # fmt: skip
            out[(src["id"], name)] = "hello from" in p.stdout
    return out if all(out.values()) else None


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

    def spread() -> list[tuple[int, str]] | None:
        # The proxy follows readiness through the endpoint watch and a reload: it may still
        # hold fewer servers for a moment after `apply --wait` saw all three ready.
        answers = [http_get(address) for _ in range(20)]
        assert all(code == 200 for code, _ in answers), answers
        return answers if len({body for _, body in answers}) == 3 else None

    wait_until(spread, timeout=30, what="requests spread over the three instances")
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


def test_tls_rule_serves_supplied_or_cluster_ca_certificate_and_redirects(
    cluster: DevCluster, tmp_path: Path
) -> None:
    c = cluster
    node = c.node("node3")
    address = node["address"]
    pem = Path(node["data_dir"]) / "agent" / "ingress" / "certs" / "web.kat.local.pem"
    assert c.katcall("label", "node", node["name"], f"{INGRESS}=true").returncode == 0
    bundle = web_bundle(tmp_path)
    vlb = bundle / "VirtualLoadBalancer.kat"
    vlb.write_text(
        vlb.read_text().replace("servicePortName: http", "servicePortName: http\n      tls: true")
    )
    p = c.katcall("apply", "-f", str(bundle), "--wait", timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    try:
        # No certificate supplied: one from the cluster CA, for that host.
        ca = Path(c.node("node1")["data_dir"]) / "pki" / "ca.crt"
        wait_until(lambda: "hello from" in curl_https(address, ca), timeout=60, what="HTTPS")
        assert redirect(address) == (301, "https://web.kat.local/x?y=1")
        listed = c.katcall("ingress", "cert", "list")
        assert "web.kat.local" in listed.stdout and "cluster-ca" in listed.stdout, listed.stdout
        inventory = c.katcall("get", "certificates", "-o", "json", check=True).stdout
        ingress = [i for i in json.loads(inventory)["items"] if i["role"] == "kat:ingress"]
        assert [i["commonName"] for i in ingress] == ["web.kat.local"], ingress

        # The operator's certificate (refused for another host; then set).
        crt, key = tmp_path / "web.crt", tmp_path / "web.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-keyout", str(key), "-out", str(crt), "-subj", "/CN=web.kat.local",
             "-addext", "subjectAltName=DNS:web.kat.local"],
            check=True, capture_output=True,
        )  # fmt: skip
        bad = c.katcall(
            "ingress", "cert", "set", "x.kat.local", "--cert", str(crt), "--key", str(key)
        )
        assert bad.returncode != 0 and "not x.kat.local" in bad.stderr, bad.stderr
        p = c.katcall(
            "ingress", "cert", "set", "web.kat.local", "--cert", str(crt), "--key", str(key)
        )
        assert p.returncode == 0, p.stderr
        wait_until(lambda: s_client_verifies(c, address, crt), timeout=30, what="supplied cert")
        assert "hello from" in curl_https(address, crt)
        listing = c.katcall("ingress", "cert", "list", "-o", "json").stdout
        assert "supplied" in listing and "PRIVATE KEY" not in listing
        assert "keyPem" not in listing
        assert pem.stat().st_mode & 0o777 == 0o600
        assert b"PRIVATE KEY" in pem.read_bytes()
        # A node that is not an ingress node gets no key, even with a valid certificate.
        assert keys_for(c, "node1") == "PERMISSION_DENIED"
        assert keys_for(c, "node3") == "OK"

        # Removed: the cluster CA's certificate again.
        assert c.katcall("ingress", "cert", "remove", "web.kat.local").returncode == 0
        wait_until(lambda: "hello from" in curl_https(address, ca), timeout=30, what="CA again")
    finally:
        c.katcall("label", "node", node["name"], f"{INGRESS}-")
    wait_until(lambda: not pem.exists(), timeout=30, what="keys gone from a non-ingress node")


def curl_https(address: str, cafile: Path) -> str:
    p = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--cacert", str(cafile),
         "--resolve", f"web.kat.local:443:{address}", "https://web.kat.local/"],
        capture_output=True, text=True,
    )  # fmt: skip
    return p.stdout


def s_client_verifies(c: DevCluster, address: str, cafile: Path) -> bool:
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"{address}:443", "-servername", "web.kat.local",
         "-CAfile", str(cafile), "-verify_return_error", "-verify_hostname", "web.kat.local"],
        input="", capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    return p.returncode == 0 and "Verify return code: 0 (ok)" in p.stdout


def redirect(address: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, 80, timeout=5)
    try:
        conn.request("GET", "/x?y=1", headers={"Host": "web.kat.local"})
        r = conn.getresponse()
        return r.status, r.getheader("Location") or ""
    finally:
        conn.close()


def keys_for(c: DevCluster, key: str) -> str:
    """The status of AgentAPI.GetIngressCertificates called with node `key`'s own
    certificate (from the host, to the leader on node1)."""
    import grpc

    from api.v1alpha1 import kat_pb2, kat_pb2_grpc

    n, leader = c.node(key), c.node("node1")
    pki = Path(n["data_dir"]) / "pki"
    creds = grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(),
        (pki / "node.key").read_bytes(),
        (pki / "node.crt").read_bytes(),
    )
    port = c.state().get("api_port", 6443)
    with grpc.secure_channel(f"{leader['address']}:{port}", creds) as ch:
        stub = kat_pb2_grpc.AgentAPIStub(ch)
        request = kat_pb2.IngressCertificatesRequest(node_name=n["name"], hosts=["web.kat.local"])
        try:
            answer = stub.GetIngressCertificates(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK" if answer.items and answer.items[0].key_pem else "EMPTY"


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
