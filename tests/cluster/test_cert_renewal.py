"""Certificate renewal on a real 2-node dev cluster with 45 s certificates: a joined
node renews its certificate through the leader, over the network, by itself, and keeps
heartbeating and serving its agent port with the renewed one; the etcd member renews
etcd's server/peer and client certificates, etcd serves the new one on new connections
and the cluster keeps answering; no agent or etcd restarts."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from internal.security import pki
from tests.devcluster import DevCluster, unavailable_reason, wait_until
from tests.helpers import served_serial

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

LIFETIME = 45


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    up = ["--cert-lifetime", str(LIFETIME)]
    with DevCluster(2, tmp_path_factory.mktemp("renew") / "cluster", extra_up_args=up) as c:
        yield c


def _serial(path: Path) -> str:
    return pki.cert_info(path.read_bytes()).serial


def _agent_port_serial(c: DevCluster, key: str) -> str:
    """The certificate node `key`'s agent port serves now (read from inside its namespace
    would need nsenter; the bridge address is reachable from the host)."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((c.address(key), 9116), timeout=5) as raw:
        with tls.wrap_socket(raw) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der
    return pki.cert_info(ssl.DER_cert_to_PEM_cert(der).encode()).serial


def _beat(c: DevCluster, name: str) -> float:
    n = [n for n in c.nodes_json() if n["metadata"]["name"] == name][0]
    stamp = n["status"].get("lastHeartbeat", "")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


def test_a_joined_node_renews_its_certificate_and_keeps_working(cluster: DevCluster) -> None:
    node = cluster.node("node2")
    crt = Path(node["data_dir"]) / "pki" / "node.crt"
    first = _serial(crt)
    pid = node["pid"]
    seen = {first}

    def renewed_twice() -> bool:
        seen.add(_serial(crt))
        cluster.katcall("get", "nodes")  # katcall in use: its admin certificate renews too
        return len(seen) >= 3

    wait_until(
        renewed_twice, timeout=4 * LIFETIME, interval=2, what="node2's certificate renewed twice"
    )
    now = _serial(crt)
    wait_until(
        lambda: _agent_port_serial(cluster, "node2") == now,
        timeout=30,
        what="node2's agent port serving the renewed certificate",
    )
    before = _beat(cluster, node["name"])
    wait_until(lambda: _beat(cluster, node["name"]) > before, timeout=30, what="a later beat")
    ready = {n["metadata"]["name"]: n["status"].get("condition") for n in cluster.nodes_json()}
    assert ready[node["name"]] == "READY"
    assert cluster.node("node2")["pid"] == pid  # the same agent, never restarted
    out = cluster.katcall("get", "certificates", "-o", "json", check=True).stdout
    mine = [c for c in json.loads(out)["items"] if c["serial"] == now]
    assert mine and mine[0]["reason"] == "renewal" and mine[0]["commonName"] == node["name"]


def _etcd_pid(data_dir: Path) -> int:
    """The pid of the etcd running on this data dir."""
    want = f"--data-dir={data_dir / 'etcd'}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and want in (proc / "cmdline").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    assert len(pids) == 1, f"etcd processes on {data_dir}: {pids}"
    return pids[0]


def test_the_member_renews_etcds_certificates_and_keeps_serving(cluster: DevCluster) -> None:
    node = cluster.node("node1")  # the etcd member
    dd = Path(node["data_dir"])
    etcd = dd / "pki" / "etcd"
    server, client = etcd / "server.crt", etcd / "client.crt"
    agent_pid, etcd_pid = node["pid"], _etcd_pid(dd)
    first = {"server": _serial(server), "client": _serial(client)}

    def renewed() -> bool:
        cluster.katcall("get", "nodes")  # katcall in use: its admin certificate renews too
        return _serial(server) != first["server"] and _serial(client) != first["client"]

    wait_until(
        renewed,
        timeout=4 * LIFETIME,
        interval=2,
        what="etcd's server and client certificates renewed",
    )
    new = _serial(server)
    info = pki.cert_info(server.read_bytes())
    assert info.role == pki.ROLE_ETCD and cluster.address("node1") in info.ip_addresses
    for key in (etcd / "server.key", etcd / "client.key"):
        assert key.stat().st_mode & 0o777 == 0o600
    auth = (client, etcd / "client.key")
    # A new connection to etcd's client and peer ports gets the renewed certificate.
    wait_until(
        lambda: served_serial(cluster.address("node1"), 2379, *auth) == _serial(server),
        timeout=30,
        what="etcd's client port serving the renewed certificate",
    )
    assert served_serial(cluster.address("node1"), 2380, *auth) == _serial(server)
    # The agent's etcd client moved to the renewed certificate (what that is needed for
    # once the old one has ended: tests/etcd/test_etcd_cert_reload.py), and the cluster
    # still answers writes and reads through it.
    wait_until(
        lambda: (
            "etcd client moved to its renewed certificate"
            in Path(node["log"]).read_text(errors="replace")
        ),
        timeout=30,
        what="the agent's etcd client on the renewed certificate",
    )
    ns = "etcd-renewed"
    assert cluster.katcall("create", "namespace", ns, check=True).returncode == 0
    try:
        out = cluster.katcall("get", "namespaces", "-o", "json", check=True).stdout
        assert ns in {n["metadata"]["name"] for n in json.loads(out)["items"]}
    finally:
        cluster.katcall("delete", "namespace", ns)
    assert cluster.node("node1")["pid"] == agent_pid and _etcd_pid(dd) == etcd_pid
    out = cluster.katcall("get", "certificates", "-o", "json", check=True).stdout
    listed = {c["serial"]: c for c in json.loads(out)["items"]}
    assert new in listed or _serial(server) in listed
    roles = {c["role"] for c in listed.values()}
    assert pki.ROLE_ETCD in roles
