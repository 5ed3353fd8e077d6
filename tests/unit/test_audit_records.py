"""Audit records: which calls count as mutating, how the object is named, and the
0600 JSON-lines file with size rotation."""

from __future__ import annotations

import json
from pathlib import Path

from api.v1alpha1 import kat_pb2
from kat_agent.leader.audit import AuditLog, describe_object, is_mutating, verb_and_kind


def test_reads_are_not_audited_everything_else_is() -> None:
    for m in ("GetWorkload", "ListNodes", "WatchEvents", "Logs", "GetClusterInfo", "ListAudit"):
        assert not is_mutating("ClusterAPI", m)
    for m in ("Apply", "DeleteNamespace", "CordonNode", "RevokeToken", "Exec", "LabelNode"):
        assert is_mutating("ClusterAPI", m)
    assert not is_mutating("AgentAPI", "Heartbeat")
    assert verb_and_kind("DeleteWorkload") == ("delete", "workload")
    assert verb_and_kind("Apply") == ("apply", "")


def test_objects_are_named_without_secrets() -> None:
    resp = kat_pb2.ApplyResponse()
    resp.workload.metadata.namespace, resp.workload.metadata.name = "default", "web"
    assert describe_object("Apply", kat_pb2.ApplyRequest(bundle=b"x"), resp) == (
        "workload default/web"
    )
    assert describe_object("Apply", kat_pb2.ApplyRequest(), None) == "bundle"
    tok = kat_pb2.CreateTokenResponse(join_token="KAT1.secret")
    tok.token.id = "1a2b"
    assert describe_object("CreateToken", kat_pb2.CreateTokenRequest(), tok) == "token 1a2b"
    assert describe_object("RevokeToken", kat_pb2.RevokeTokenRequest(id="1a2b"), None) == (
        "token 1a2b"
    )
    ex = kat_pb2.ExecRequest(namespace="default", workload="web", command=["sh"], stdin=b"pw")
    assert describe_object("Exec", ex, None) == "workload default/web"
    drain = kat_pb2.DrainRequest(name="vm-2")
    assert describe_object("DrainNode", drain, kat_pb2.Node()) == "node vm-2"
    delete = kat_pb2.DeleteWorkloadRequest(namespace="a", name="b")
    assert describe_object("DeleteWorkload", delete, None) == "workload a/b"


def test_audit_log_is_private_json_lines_and_rotates(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", max_bytes=400, keep=2)
    for i in range(12):
        rec = kat_pb2.AuditRecord(actor="alice", verb="apply", object=f"workload d/w{i}")
        rec.time.FromSeconds(1_700_000_000 + i)
        rec.outcome = "OK"
        log.append(rec)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600
        assert p.stat().st_size <= 400
        for line in p.read_text().splitlines():
            doc = json.loads(line)
            assert doc["actor"] == "alice" and doc["time"].endswith(".000Z")
    last = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert last["object"] == "workload d/w11"
