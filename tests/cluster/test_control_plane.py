"""The control plane on a real 3-node dev cluster: real etcd, real mTLS, one
network namespace per node (issue: init/join, PKI, heartbeats, katcall)."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.security import clientconfig, pki, rpc
from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

TICK, LOSS = 1, 5  # dev-cluster's agentTickSeconds and nodeLossTimeoutSeconds


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(3, tmp_path_factory.mktemp("cp") / "cluster") as c:
        yield c


def nodes_by_name(c: DevCluster) -> dict[str, dict]:
    return {n["metadata"]["name"]: n for n in c.nodes_json()}


def condition(c: DevCluster, name: str) -> str:
    return nodes_by_name(c)[name]["status"].get("condition", "")


def node_name(c: DevCluster, key: str) -> str:
    return c.node(key)["name"]


def api_address(c: DevCluster) -> str:
    return f"{c.address('node1')}:9115"


def new_token(c: DevCluster, *args: str) -> str:
    p = c.katcall("token", "create", "--quiet", *args, check=True)
    return p.stdout.strip()


def try_join(c: DevCluster, token: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:  # noqa: F821
    """A join attempt from node3's namespace with a fresh data dir."""
    return c.exec(
        "node3",
        "kat-agent",
        "join",
        "--leader",
        api_address(c),
        "--token",
        token,
        "--data-dir",
        str(tmp),
        "--advertise-address",
        c.address("node3"),
        *extra,
        timeout=30,
    )


def test_three_nodes_ready_with_distinct_subnets(cluster: DevCluster) -> None:
    nodes = cluster.nodes_json()
    assert len(nodes) == 3
    assert all(n["status"]["condition"] == "READY" for n in nodes)
    assert len({n["metadata"]["name"] for n in nodes}) == 3
    nets = [ipaddress.ip_network(n["status"]["subnet"]) for n in nodes]
    for i, a in enumerate(nets):
        assert a.subnet_of(ipaddress.ip_network("10.100.0.0/16"))
        for b in nets[i + 1 :]:
            assert not a.overlaps(b), f"{a} overlaps {b}"
    # the leader is marked, in the table and in JSON
    assert [n["metadata"]["name"] for n in nodes if n["status"].get("leader")] == [
        node_name(cluster, "node1")
    ]
    table = cluster.katcall("get", "nodes", check=True).stdout
    assert "leader" in table and "READY" in table


def test_json_and_yaml_are_canonical(cluster: DevCluster) -> None:
    doc = json.loads(cluster.katcall("get", "nodes", "-o", "json", check=True).stdout)
    assert set(doc) == {"items"}
    status = doc["items"][0]["status"]
    assert "advertiseAddress" in status and "lastHeartbeat" in status  # camelCase
    y = cluster.katcall("get", "nodes", "-o", "yaml", check=True).stdout
    assert y.startswith("items:")


def test_join_refused_for_expired_revoked_and_wrong_tokens(
    cluster: DevCluster, tmp_path: Path
) -> None:
    expired = new_token(cluster, "--ttl", "1s")
    wait_until(
        lambda: "expired" in cluster.katcall("token", "list").stdout,
        timeout=10,
        what="token expiry",
    )
    p = try_join(cluster, expired, tmp_path / "a")
    assert p.returncode != 0 and "expired" in p.stderr

    revoked = new_token(cluster)
    token_id = revoked.split(".")[3]
    cluster.katcall("token", "revoke", token_id, check=True)
    p = try_join(cluster, revoked, tmp_path / "b")
    assert p.returncode != 0 and "revoked" in p.stderr

    good = new_token(cluster)
    wrong_secret = good[:-1] + ("a" if good[-1] != "a" else "b")
    p = try_join(cluster, wrong_secret, tmp_path / "c")
    assert p.returncode != 0 and "invalid join token" in p.stderr
    unknown = ".".join([*good.split(".")[:3], "zzzzzz", good.split(".")[4]])
    p2 = try_join(cluster, unknown, tmp_path / "c2")
    # one answer for an unknown id and a wrong secret: it tells no id apart
    assert p2.returncode != 0 and p2.stderr.splitlines()[-1] == p.stderr.splitlines()[-1]

    p = try_join(cluster, "not-a-token", tmp_path / "d")
    assert p.returncode != 0 and "malformed join token" in p.stderr
    assert len(cluster.nodes_json()) == 3  # nothing was registered


def test_join_refuses_leader_whose_ca_does_not_match(cluster: DevCluster, tmp_path: Path) -> None:
    token = new_token(cluster)
    parts = token.split(".")
    parts[1] = ("0" if parts[1][0] != "0" else "1") + parts[1][1:]
    p = try_join(cluster, ".".join(parts), tmp_path / "x")
    assert p.returncode != 0
    assert "does not match the token" in p.stderr
    assert not (tmp_path / "x" / "pki" / "node.key").exists()


def test_single_use_token(cluster: DevCluster, tmp_path: Path) -> None:
    token = new_token(cluster, "--max-uses", "1")
    token_id = token.split(".")[3]
    tokens = json.loads(cluster.katcall("token", "list", "-o", "json", check=True).stdout)["items"]
    assert any(t["id"] == token_id and t["maxUses"] == 1 for t in tokens)
    assert all("secret" not in k.lower() or k == "secretSha256" for t in tokens for k in t)


def _ctx(c: DevCluster) -> clientconfig.Context:
    assert c.katconfig is not None
    return clientconfig.load(c.katconfig).context()


def _call_list_nodes(c: DevCluster, creds: grpc.ChannelCredentials) -> grpc.StatusCode:
    with grpc.secure_channel(api_address(c), creds, rpc.api_channel_options()) as ch:
        try:
            kat_pb2_grpc.ClusterAPIStub(ch).ListNodes(kat_pb2.ListRequest(), timeout=10)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_api_refuses_clients_without_a_valid_admin_certificate(
    cluster: DevCluster, tmp_path: Path
) -> None:
    ctx = _ctx(cluster)
    assert (
        _call_list_nodes(cluster, grpc.ssl_channel_credentials(ctx.ca, ctx.key, ctx.cert))
        == grpc.StatusCode.OK
    )
    # no client certificate: the TLS handshake is refused
    assert (
        _call_list_nodes(cluster, grpc.ssl_channel_credentials(ctx.ca))
        == grpc.StatusCode.UNAVAILABLE
    )
    # a certificate from another CA
    other = pki.create_ca("other-ca")
    rogue = pki.issue_certificate(
        other.cert_pem, other.key_pem, common_name="admin", role=pki.ROLE_ADMIN
    )
    creds = grpc.ssl_channel_credentials(ctx.ca, rogue.key_pem, rogue.cert_pem)
    assert _call_list_nodes(cluster, creds) == grpc.StatusCode.UNAVAILABLE
    # a node certificate of this cluster cannot call admin RPCs
    node_dir = cluster.dir / "node2" / "pki"
    node_creds = grpc.ssl_channel_credentials(
        ctx.ca, (node_dir / "node.key").read_bytes(), (node_dir / "node.crt").read_bytes()
    )
    assert _call_list_nodes(cluster, node_creds) == grpc.StatusCode.PERMISSION_DENIED
    # ... nor report heartbeats as another node
    with grpc.secure_channel(api_address(cluster), node_creds, rpc.api_channel_options()) as ch:
        with pytest.raises(grpc.RpcError) as err:
            kat_pb2_grpc.AgentAPIStub(ch).Heartbeat(
                kat_pb2.HeartbeatRequest(node_name=node_name(cluster, "node3")), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_node_certificate_cannot_pose_as_the_api(cluster: DevCluster, tmp_path: Path) -> None:
    """The fake-API attack: node3's real certificate (this cluster's CA, and 127.0.0.1 in its
    addresses) serves a ClusterAPI on loopback; katcall with the real admin config,
    pointed there, refuses it with a clear message and never calls it."""
    from concurrent import futures

    called: list[str] = []

    class Fake(kat_pb2_grpc.ClusterAPIServicer):
        def ListNodes(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
            called.append("ListNodes")
            return kat_pb2.NodeList()

    pki_dir = cluster.dir / "node3" / "pki"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    kat_pb2_grpc.add_ClusterAPIServicer_to_server(Fake(), server)
    ca = (pki_dir / "ca.crt").read_bytes()
    pair = [((pki_dir / "node.key").read_bytes(), (pki_dir / "node.crt").read_bytes())]
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(pair, ca, True))
    server.start()
    try:
        assert cluster.katconfig is not None
        cfg = clientconfig.load(cluster.katconfig)
        cfg.context().endpoints = [f"127.0.0.1:{port}"]
        clientconfig.save(cfg, tmp_path / "fake.katconfig")
        p = cluster.katcall(
            "--katconfig", str(tmp_path / "fake.katconfig"), "--request-timeout", "5", "get", "no"
        )
    finally:
        server.stop(None)
    assert p.returncode != 0 and not called
    assert "not a KAT API server" in p.stderr and "O=kat:node" in p.stderr, p.stderr


def test_node_key_files_are_private(cluster: DevCluster) -> None:
    for key in (
        "node1/pki/node.key",
        "node1/pki/ca.key",
        "node2/pki/node.key",
        "node1/admin.katconfig",
    ):
        assert (cluster.dir / key).stat().st_mode & 0o777 == 0o600, key
    assert not (cluster.dir / "node2" / "pki" / "ca.key").exists()


def test_killed_agent_goes_not_ready_and_comes_back_with_its_identity(cluster: DevCluster) -> None:
    name = node_name(cluster, "node2")
    before = nodes_by_name(cluster)[name]
    cluster.kill("node2")
    killed = time.monotonic()
    # NOT_READY within nodeLossTimeoutSeconds + agentTickSeconds (+ the polling step)
    wait_until(
        lambda: condition(cluster, name) == "NOT_READY",
        timeout=LOSS + TICK + 1,
        interval=0.2,
        what=f"{name} NOT_READY",
    )
    assert time.monotonic() - killed >= LOSS - 1  # not before the timeout
    cluster.start("node2")
    wait_until(lambda: condition(cluster, name) == "READY", timeout=30, what=f"{name} READY again")
    after = nodes_by_name(cluster)[name]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["status"]["subnet"] == before["status"]["subnet"]
    assert len(cluster.nodes_json()) == 3
    events = cluster.katcall("get", "events", check=True).stdout
    assert "NodeNotReady" in events and "NodeReady" in events


def test_cordon_and_uncordon(cluster: DevCluster) -> None:
    name = node_name(cluster, "node3")
    cluster.katcall("cordon", name, check=True)
    assert nodes_by_name(cluster)[name]["spec"]["unschedulable"] is True
    assert "SchedulingDisabled" in cluster.katcall("get", "nodes", check=True).stdout
    cluster.katcall("uncordon", name, check=True)
    assert not nodes_by_name(cluster)[name].get("spec", {}).get("unschedulable")
    p = cluster.katcall("cordon", "no-such-node")
    assert p.returncode != 0 and "not found" in p.stderr


def test_leader_restart_keeps_nodes_tokens_and_settings(cluster: DevCluster) -> None:
    token = new_token(cluster, "--description", "survives-restart")
    cordoned = node_name(cluster, "node3")
    cluster.katcall("cordon", cordoned, check=True)
    before = {
        n: (v["metadata"]["uid"], v["status"]["subnet"]) for n, v in nodes_by_name(cluster).items()
    }
    cluster.kill("node1")
    cluster.start("node1")
    wait_until(lambda: cluster.katcall("get", "nodes").returncode == 0, timeout=30, what="API back")
    wait_until(lambda: set(cluster.ready_nodes()) == set(before), timeout=30, what="all READY")
    after = nodes_by_name(cluster)
    assert {n: (v["metadata"]["uid"], v["status"]["subnet"]) for n, v in after.items()} == before
    assert after[cordoned]["spec"]["unschedulable"] is True
    assert "survives-restart" in cluster.katcall("token", "list", check=True).stdout
    assert token.split(".")[3] in cluster.katcall("token", "list", check=True).stdout
    cluster.katcall("uncordon", cordoned, check=True)


def _readable_by_others(path: Path) -> bool:
    """Could an unprivileged local user open this file (o+r, and o+x on every
    directory above it)?"""
    if not path.stat().st_mode & 0o004:
        return False
    return all(d.stat().st_mode & 0o001 for d in path.parents)


def test_no_file_or_process_list_readable_by_others_holds_a_token(cluster: DevCluster) -> None:
    token_re = re.compile(rb"KAT1\.[0-9a-f]{64}\.[0-9]+\.[a-z0-9]{6}\.[a-z0-9]{32}")
    exposed = []
    for f in cluster.dir.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink() and _readable_by_others(f):
                if f.stat().st_size < 50 << 20 and token_re.search(f.read_bytes()):
                    exposed.append(str(f))
        except OSError:
            continue  # vanished (rotated, container exited) while walking
    assert exposed == []
    # init's join command is kept, for root only
    n1 = Path(cluster.node("node1")["data_dir"])
    assert (n1 / "join-command").stat().st_mode & 0o077 == 0
    assert token_re.search((n1 / "join-command").read_bytes())
    # logs are private, and init (whose stdout is node1's log) wrote no token there
    for n in cluster.state()["nodes"]:
        assert Path(n["log"]).stat().st_mode & 0o077 == 0
        assert not token_re.search(Path(n["log"]).read_bytes()), n["key"]
    # and no agent has a token on its command line (readable by anyone in /proc)
    for n in cluster.state()["nodes"]:
        cmdline = Path(f"/proc/{n['pid']}/cmdline").read_bytes()
        assert not token_re.search(cmdline), n["key"]


def test_default_token_cannot_add_an_etcd_member(cluster: DevCluster, tmp_path: Path) -> None:
    token = new_token(cluster)
    p = try_join(cluster, token, tmp_path / "m", "--etcd-member")
    assert p.returncode != 0 and "joins workers only" in p.stderr
    assert len(cluster.nodes_json()) == 3
    tid = token.split(".")[3]
    listed = json.loads(cluster.katcall("get", "tokens", "-o", "json", check=True).stdout)
    mine = [t for t in listed["items"] if t["id"] == tid]
    assert mine and not mine[0].get("uses") and not mine[0].get("etcdMember")


def _raw_join(c: DevCluster, req: kat_pb2.JoinRequest) -> grpc.RpcError:
    ca = Path(c.node("node1")["data_dir"], "pki", "ca.crt").read_bytes()
    opts = [("grpc.ssl_target_name_override", pki.JOIN_SERVER_NAME)]
    target = f"{c.address('node1')}:9117"
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), options=opts) as ch:
        with pytest.raises(grpc.RpcError) as err:
            kat_pb2_grpc.AgentAPIStub(ch).Join(req, timeout=10)
    return err.value  # type: ignore[return-value]


def test_bad_join_requests_are_invalid_argument_and_spend_nothing(cluster: DevCluster) -> None:
    from internal.core import tokens

    token = new_token(cluster, "--max-uses", "1")
    cred = tokens.parse(token).credential
    key = pki.generate_private_key()
    good_csr = pki.create_csr(key)
    for req in (
        kat_pb2.JoinRequest(token=cred, csr_pem=b"junk", advertise_address=c_addr(cluster)),
        kat_pb2.JoinRequest(token=cred, csr_pem=good_csr, advertise_address=""),
        kat_pb2.JoinRequest(token=cred, csr_pem=good_csr, advertise_address="evil.example"),
        # another node's address: no certificate for it
        kat_pb2.JoinRequest(
            token=cred, csr_pem=good_csr, advertise_address=cluster.address("node1")
        ),
    ):
        err = _raw_join(cluster, req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    # an oversized request is refused before it is read in full
    err = _raw_join(cluster, kat_pb2.JoinRequest(token="x" * (1 << 20)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(cluster.nodes_json()) == 3  # no node record, no subnet left behind
    tid = token.split(".")[3]
    listed = json.loads(cluster.katcall("get", "tokens", "-o", "json", check=True).stdout)
    assert not [t for t in listed["items"] if t["id"] == tid][0].get("uses")


def c_addr(c: DevCluster) -> str:
    """An address no node uses, inside the dev cluster's subnet."""
    used = {n["address"] for n in c.state()["nodes"]}
    net = ipaddress.ip_network(c.subnet)
    return next(str(h) for h in reversed(list(net.hosts())) if str(h) not in used)


def test_a_removed_nodes_certificate_is_refused(cluster: DevCluster) -> None:
    from internal.core import tokens

    def join_once() -> tuple[str, bytes, bytes]:
        addr = c_addr(cluster)  # joined from the host: the address is approved on the token
        token = new_token(cluster, "--max-uses", "1", "--address", addr)
        cred = tokens.parse(token).credential
        key = pki.generate_private_key()
        req = kat_pb2.JoinRequest(
            token=cred,
            csr_pem=pki.create_csr(key),
            advertise_address=addr,
            hostname="gone",
        )
        ca = Path(cluster.node("node1")["data_dir"], "pki", "ca.crt").read_bytes()
        opts = [("grpc.ssl_target_name_override", pki.JOIN_SERVER_NAME)]
        target = f"{cluster.address('node1')}:9117"
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), options=opts) as ch:
            resp = kat_pb2_grpc.AgentAPIStub(ch).Join(req, timeout=30)
        return resp.node.metadata.name, key, resp.certificate_pem

    def watch(name: str, key: bytes, cert: bytes) -> grpc.StatusCode:
        ca = Path(cluster.node("node1")["data_dir"], "pki", "ca.crt").read_bytes()
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        with grpc.secure_channel(api_address(cluster), creds, rpc.api_channel_options()) as ch:
            stream = kat_pb2_grpc.AgentAPIStub(ch).WatchAssignments(
                kat_pb2.AssignmentsRequest(node_name=name), timeout=5
            )
            try:
                next(iter(stream))
            except grpc.RpcError as err:
                return err.code()  # type: ignore[attr-defined]
        return grpc.StatusCode.OK

    name, key, cert = join_once()
    try:
        assert watch(name, key, cert) == grpc.StatusCode.OK  # its own certificate works
        cluster.katcall("node", "remove", name, check=True, timeout=120)
        assert watch(name, key, cert) == grpc.StatusCode.PERMISSION_DENIED
        # a new node under the same name does not bring the old certificate back
        again, key2, cert2 = join_once()
        assert again == name
        assert watch(name, key, cert) == grpc.StatusCode.PERMISSION_DENIED
        assert watch(name, key2, cert2) == grpc.StatusCode.OK
    finally:
        cluster.katcall("node", "remove", name, timeout=120)
