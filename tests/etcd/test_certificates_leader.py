"""Certificates on a real leader (`kat-agent init`: real etcd, mTLS gRPC) with short
lifetimes: the node, API and admin certificates renew themselves while the agent keeps
serving and heartbeating; the inventory lists them; a join may only put a verified
address in its certificate."""

from __future__ import annotations

import shutil
import socket
import ssl
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.core import tokens
from internal.security import pki, rpc
from tests.leader_harness import Leader, poll

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None or shutil.which("kat-agent") is None,
    reason="needs etcd and kat-agent on PATH (scripts/setup.sh)",
)

LIFETIME = 45  # seconds: each certificate renews after about 30 s


def _served_serial(port: int) -> str:
    """Serial of the certificate a server on 127.0.0.1:port presents now."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    tls.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with tls.wrap_socket(raw) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der
    return pki.cert_info(ssl.DER_cert_to_PEM_cert(der).encode()).serial


def _serial(path: Path) -> str:
    return pki.cert_info(path.read_bytes()).serial


def _last_heartbeat(leader: Leader) -> float:
    nodes = leader.katcall_json("get", "nodes")["items"]
    mine = [n for n in nodes if n["metadata"]["name"] == leader.node_name][0]
    beat = mine["status"].get("lastHeartbeat", "")
    return datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp() if beat else 0.0


def test_certificates_renew_themselves_while_serving(tmp_path: Path) -> None:
    spec = {"certificateLifetimeSeconds": LIFETIME}
    with Leader(tmp_path, spec=spec) as leader:
        pkid = leader.data / "pki"
        node0, api0 = _serial(pkid / "node.crt"), _serial(pkid / "api.crt")
        admin0 = pki.cert_info(leader.context.cert).serial
        life = pki.cert_info((pkid / "node.crt").read_bytes())
        assert (life.not_after - life.not_before).total_seconds() < LIFETIME + 10
        assert _served_serial(leader.ports["apiPort"]) == api0
        assert _served_serial(leader.ports["agentPort"]) == node0

        # every certificate twice renewed: without restart, and the renewed ones served;
        # katcall is used meanwhile (an admin certificate renews when used)
        def renewed_twice() -> bool:
            beats.append(_last_heartbeat(leader))
            seen_node.add(_serial(pkid / "node.crt"))
            seen_api.add(_serial(pkid / "api.crt"))
            return len(seen_node) >= 3 and len(seen_api) >= 3

        seen_node, seen_api, beats = {node0}, {api0}, []
        poll(renewed_twice, within=3 * LIFETIME, what="two renewals", every=1.0)
        assert beats == sorted(beats) and beats[-1] > beats[0]
        assert leader.proc is not None and leader.proc.poll() is None  # never restarted
        poll(
            lambda: _served_serial(leader.ports["agentPort"]) == _serial(pkid / "node.crt"),
            within=20,
            what="the agent port serving the renewed node certificate",
        )
        assert _served_serial(leader.ports["apiPort"]) == _serial(pkid / "api.crt")

        # still heartbeating with the renewed certificate
        before = _last_heartbeat(leader)
        poll(lambda: _last_heartbeat(leader) > before, within=20, what="a later heartbeat")
        # katcall renewed its admin certificate on one of the calls above (0600 kept)
        assert pki.cert_info(leader.context.cert).serial != admin0
        assert leader.katconfig.stat().st_mode & 0o777 == 0o600

        # the inventory: every live certificate with identity, role, serial and expiry
        items = leader.katcall_json("get", "certificates")["items"]
        by_serial = {c["serial"]: c for c in items}
        node_now = _serial(pkid / "node.crt")
        assert by_serial[node_now]["role"] == "kat:node"
        assert by_serial[node_now]["commonName"] == leader.node_name
        assert by_serial[node_now]["reason"] == "renewal"
        assert {c["role"] for c in items} >= {"kat:node", "kat:api", "kat:admin"}
        table = leader.katcall("get", "certificates", check=True).stdout
        assert table.split()[:5] == ["IDENTITY", "ROLE", "SERIAL", "NOT-AFTER", "LEFT"]
        assert node_now in table


def _join(leader: Leader, token: str, address: str) -> grpc.RpcError | kat_pb2.JoinResponse:
    key = pki.generate_private_key()
    req = kat_pb2.JoinRequest(
        token=tokens.parse(token).credential,
        csr_pem=pki.create_csr(key),
        advertise_address=address,
        hostname="claims",
    )
    opts = [("grpc.ssl_target_name_override", pki.JOIN_SERVER_NAME)]
    target = f"127.0.0.1:{leader.ports['joinPort']}"
    ca = leader.context.ca
    with grpc.secure_channel(target, rpc.client_credentials(ca), options=opts) as ch:
        try:
            return kat_pb2_grpc.AgentAPIStub(ch).Join(req, timeout=30)
        except grpc.RpcError as err:
            return err


def test_a_join_gets_a_certificate_only_for_a_verified_address(tmp_path: Path) -> None:
    with Leader(tmp_path) as leader:
        nodes_before = len(leader.katcall_json("get", "nodes")["items"])
        token = leader.join_token()
        # joined from 127.0.0.1, claiming 127.0.0.77: refused, nothing stored, nothing spent
        err = _join(leader, token, "127.0.0.77")
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "not the address this join came from" in err.details()  # type: ignore[attr-defined]
        assert "--address 127.0.0.77" in err.details()  # type: ignore[attr-defined]
        assert len(leader.katcall_json("get", "nodes")["items"]) == nodes_before
        tid = token.split(".")[3]
        listed = leader.katcall_json("get", "tokens")["items"]
        assert not [t for t in listed if t["id"] == tid][0].get("uses")

        # the operator approves the address (a node behind NAT): the join goes through
        p = leader.katcall(
            "token", "create", "-q", "--max-uses", "1", "--address", "127.0.0.77", check=True
        )
        resp = _join(leader, p.stdout.strip(), "127.0.0.77")
        assert isinstance(resp, kat_pb2.JoinResponse)
        assert "127.0.0.77" in pki.cert_info(resp.certificate_pem).ip_addresses
        # a bad approval is refused at creation
        bad = leader.katcall("token", "create", "--address", "not-an-ip")
        assert bad.returncode != 0 and "not an IP address" in bad.stderr
        # the join's source address itself needs no approval
        resp = _join(leader, leader.join_token(), "127.0.0.1")
        assert isinstance(resp, grpc.RpcError)  # 127.0.0.1 is the leader's own address ...
        assert "belongs to node" in resp.details()  # type: ignore[attr-defined]


def _renew(leader: Leader, cert: bytes, key: bytes) -> tuple[bytes, bytes]:
    """A renewal over mTLS with (cert, key): the new certificate and its new key."""
    creds = rpc.client_credentials(leader.context.ca, cert, key)
    new_key = pki.generate_private_key()
    with grpc.secure_channel(leader.api, creds, options=rpc.api_channel_options()) as ch:
        req = kat_pb2.RenewCertificateRequest(csr_pem=pki.create_csr(new_key))
        resp = kat_pb2_grpc.AgentAPIStub(ch).RenewCertificate(req, timeout=30)
    return resp.certificate_pem, new_key


def test_renewal_keeps_identity_and_ends_with_revocation(tmp_path: Path) -> None:
    """A per-person admin renews as the same person (and `admin revoke` ends the renewed
    certificate too); a revoked admin and a removed node cannot renew."""
    from internal.security import clientconfig

    with Leader(tmp_path) as leader:
        cfg_path = tmp_path / "alice.katconfig"
        leader.katcall("admin", "create", "alice", "-o", str(cfg_path), check=True)
        alice = clientconfig.load(cfg_path).context()
        renewed, renewed_key = _renew(leader, alice.cert, alice.key)
        info = pki.cert_info(renewed)
        assert (info.common_name, info.role) == ("alice", "kat:admin")
        listed = leader.katcall("admin", "list", "-o", "json", check=True).stdout
        assert rpc.certificate_sha256(renewed) in listed  # in alice's record
        leader.katcall("admin", "revoke", "alice", check=True)
        for cert, key in ((alice.cert, alice.key), (renewed, renewed_key)):
            with pytest.raises(grpc.RpcError) as err:
                _renew(leader, cert, key)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]

        # a node renews with its own identity and addresses; once removed it cannot
        resp, key = leader.join_node("renewer", "127.0.0.88")
        new, new_key = _renew(leader, resp.certificate_pem, key)
        got = pki.cert_info(new)
        assert got.common_name == resp.node.metadata.name and got.role == "kat:node"
        assert "127.0.0.88" in got.ip_addresses
        leader.katcall("node", "remove", resp.node.metadata.name, check=True, timeout=120)
        # before and after its renewal: both refused
        for cert, k in ((resp.certificate_pem, key), (new, new_key)):
            with pytest.raises(grpc.RpcError) as err:
                _renew(leader, cert, k)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
