"""Issue 10 against a real leader (`kat-agent init`: real etcd, mTLS gRPC): the CA keys in
etcd are sealed, the join port serves a leaf and not the CA key, per-person admins can be
revoked at once (also on an open connection), also one made by `kat-agent certificate`,
and a removed node's open streams are cut."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.security import clientconfig, pki, rpc, sealing
from internal.state.etcd import EtcdClient
from kat_agent import bootstrap
from tests.leader_harness import Leader, poll

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None or shutil.which("kat-agent") is None,
    reason="needs etcd and kat-agent on PATH (scripts/setup.sh)",
)


@pytest.fixture(scope="module")
def leader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leader]:
    with Leader(tmp_path_factory.mktemp("keys")) as lead:
        yield lead


def _raw_etcd_value(leader: Leader, key: str) -> bytes:
    p = leader.data / "pki" / "etcd"

    async def read() -> bytes:
        client = EtcdClient(
            [f"127.0.0.1:{leader.ports['etcdClientPort']}"],
            ca_file=p / "ca.crt",
            cert_file=p / "client.crt",
            key_file=p / "client.key",
        )
        try:
            kv = await client.get(key)
            assert kv is not None, f"{key} not in etcd"
            return kv.value
        finally:
            await client.close()

    return asyncio.run(read())


def test_an_etcd_read_gives_no_ca_private_key(leader: Leader) -> None:
    raw = _raw_etcd_value(leader, "/kat/pki/ca")
    assert b"PRIVATE KEY" not in raw
    material = kat_pb2.CAMaterial.FromString(raw)
    assert not material.ca_key_pem and not material.etcd_ca_key_pem
    assert material.sealed_ca_key and material.sealed_etcd_ca_key
    secret_file = leader.data / "pki" / "cluster-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    ca_key, etcd_key = bootstrap.open_material(material, sealing.read_secret(secret_file))
    assert ca_key == (leader.data / "pki" / "ca.key").read_bytes()
    assert etcd_key == (leader.data / "pki" / "etcd" / "ca.key").read_bytes()


def test_the_join_port_serves_a_leaf_certificate_not_the_ca(leader: Leader) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", leader.ports["joinPort"]), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=pki.JOIN_SERVER_NAME) as tls:
            leaf_pem = ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True)).encode()
    leaf = pki.cert_info(leaf_pem)
    assert not leaf.is_ca and leaf.role == pki.ROLE_JOIN and not leaf.client_auth
    pki.verify_certificate(leader.context.ca, leaf_pem)
    # and a join (pinning the CA from that chain) works
    resp, _ = leader.join_node("leafcheck", "127.0.0.90")
    assert resp.node.metadata.name == "leafcheck"
    assert not resp.cluster_secret  # a worker never gets the secret that seals the CA keys
    leader.katcall("node", "remove", "leafcheck", check=True)


def test_admin_create_list_revoke(leader: Leader, tmp_path: Path) -> None:
    alice_cfg = tmp_path / "alice.katconfig"
    out = leader.katcall("admin", "create", "alice", "-o", str(alice_cfg), check=True).stdout
    assert "alice" in out and alice_cfg.stat().st_mode & 0o777 == 0o600
    ctx = clientconfig.load(alice_cfg).context()
    assert pki.peer_identity(ctx.cert) == ("alice", pki.ROLE_ADMIN)
    assert leader.katcall("admin", "create", "alice", "-o", str(tmp_path / "x")).returncode != 0

    def alice(*args: str) -> Any:
        return leader.katcall("--katconfig", str(alice_cfg), *args)

    assert alice("token", "create", "-q").returncode == 0
    audit = json.loads(leader.katcall("get", "audit", "-o", "json", check=True).stdout)["items"]
    assert any(r["actor"] == "alice" and r["verb"] == "create" for r in audit), audit

    # a connection alice already holds open
    channel = grpc.secure_channel(leader.api, rpc.client_credentials(ctx.ca, ctx.cert, ctx.key))
    try:
        stub = kat_pb2_grpc.ClusterAPIStub(channel)
        stub.ListNodes(kat_pb2.ListRequest(), timeout=10)
        refused = alice("admin", "revoke", "alice")
        assert refused.returncode != 0 and "cannot revoke itself" in refused.stderr
        leader.katcall("admin", "revoke", "alice", check=True)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListNodes(kat_pb2.ListRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in (err.value.details() or "")
    finally:
        channel.close()
    p = alice("get", "nodes")
    assert p.returncode != 0 and "revoked" in p.stderr
    listed = json.loads(leader.katcall("admin", "list", "-o", "json", check=True).stdout)["items"]
    by_name = {a["name"]: a for a in listed}
    assert by_name["alice"]["revoked"] and by_name["alice"]["revokedBy"] == "admin"
    assert not by_name["admin"].get("revoked")  # init's admin is a recorded person too
    table = leader.katcall("admin", "list", check=True).stdout
    assert "revoked by admin" in table

    # the name can be given out again; the old certificate stays refused
    again = tmp_path / "alice2.katconfig"
    leader.katcall("admin", "create", "alice", "-o", str(again), check=True)
    assert leader.katcall("--katconfig", str(again), "get", "nodes").returncode == 0
    assert alice("get", "nodes").returncode != 0
    bad = leader.katcall("admin", "create", "Bad Name", "-o", str(tmp_path / "b"))
    assert bad.returncode != 0 and "admin name" in bad.stderr


def test_an_admin_certificate_made_on_the_member_is_listed_and_revocable(
    leader: Leader, tmp_path: Path
) -> None:
    out = tmp_path / "bob"
    made = subprocess.run(
        ["kat-agent", "certificate", "bob", "--role", "admin", "--data-dir", str(leader.data),
         "--out-dir", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert (out / "bob.key").stat().st_mode & 0o777 == 0o600
    cert = (out / "bob.crt").read_bytes()
    serial = pki.cert_info(cert).serial
    listed = leader.katcall_json("get", "certificates")["items"]
    assert [(c["commonName"], c["role"]) for c in listed if c["serial"] == serial] == [
        ("bob", pki.ROLE_ADMIN)
    ]
    admins = {a["name"]: a for a in leader.katcall_json("admin", "list")["items"]}
    assert "bob" in admins and not admins["bob"].get("revoked")
    creds = rpc.client_credentials(leader.context.ca, cert, (out / "bob.key").read_bytes())
    channel = grpc.secure_channel(leader.api, creds, options=rpc.api_channel_options())
    try:
        stub = kat_pb2_grpc.ClusterAPIStub(channel)
        stub.ListNodes(kat_pb2.ListRequest(), timeout=10)
        leader.katcall("admin", "revoke", "bob", check=True)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListNodes(kat_pb2.ListRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()
    # Not recorded, not written: a data dir without a running member.
    bare = subprocess.run(
        ["kat-agent", "certificate", "carol", "--role", "admin", "--data-dir",
         str(tmp_path / "nothing"), "--out-dir", str(tmp_path / "carol")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bare.returncode != 0 and not (tmp_path / "carol").exists()


def test_a_removed_nodes_open_streams_are_cut(leader: Leader) -> None:
    resp, key = leader.join_node("streamer", "127.0.0.91")
    name = resp.node.metadata.name
    creds = rpc.client_credentials(leader.context.ca, resp.certificate_pem, key)
    channel = grpc.secure_channel(leader.api, creds)
    beats: queue.Queue[kat_pb2.HeartbeatRequest | None] = queue.Queue()

    def requests() -> Iterator[kat_pb2.HeartbeatRequest]:
        while (req := beats.get()) is not None:
            yield req

    stub = kat_pb2_grpc.AgentAPIStub(channel)
    pool = ThreadPoolExecutor(3)
    try:
        beat = kat_pb2.HeartbeatRequest(node_name=name, advertise_address="127.0.0.91")
        beats.put(beat)
        heartbeats = stub.Heartbeats(requests())
        assignments = stub.WatchAssignments(kat_pb2.AssignmentsRequest(node_name=name))
        endpoints = stub.WatchEndpoints(kat_pb2.EndpointsRequest(node_name=name))
        # each stream is open and answered once
        for stream in (heartbeats, assignments, endpoints):
            pool.submit(next, stream).result(timeout=30)

        def end(stream: Any) -> grpc.StatusCode:
            try:
                for _ in stream:
                    pass
            except grpc.RpcError as err:
                return err.code()
            return grpc.StatusCode.OK

        ended = [pool.submit(end, s) for s in (heartbeats, assignments, endpoints)]
        leader.katcall("node", "remove", name, check=True)
        # nothing more is sent on the heartbeat stream: the leader itself ends all three
        codes = [f.result(timeout=30) for f in ended]
        assert codes == [grpc.StatusCode.PERMISSION_DENIED] * 3
        # and a new call with that certificate is refused too
        with pytest.raises(grpc.RpcError) as err:
            stub.Heartbeat(beat, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        raw = _raw_etcd_value(
            leader, f"/kat/pki/revoked/{rpc.certificate_sha256(resp.certificate_pem)}"
        )
        assert kat_pb2.CertificateRevocation.FromString(raw).common_name == name
    finally:
        beats.put(None)
        channel.close()
        pool.shutdown(wait=False, cancel_futures=True)
    assert poll(lambda: threading.active_count() < 50, what="threads settle")
