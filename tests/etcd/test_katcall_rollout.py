"""`katcall rollout status|history|undo|restart`, `rollback --wait` and `describe` of tokens,
events and audit records, run as a user runs them (the real `katcall` executable) against a
real leader (`kat-agent init`: real etcd, mTLS gRPC) with a simulated agent as the node
(tests/leader_harness.py). Each test checks output and exit code."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from tests.leader_harness import Bundle, Leader, SimNet, poll, service

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None or shutil.which("kat-agent") is None,
    reason="needs etcd and kat-agent on PATH (scripts/setup.sh)",
)

NAME = "rollweb"
V1 = "localhost/busybox:latest"
V2 = "localhost/busybox:v2"


def annotated(text: str, cause: str) -> str:
    return text.replace(
        "  namespace: default\n",
        f"  namespace: default\n  annotations:\n    kat.dws.rip/change-cause: {cause}\n",
    )


@pytest.fixture(scope="module")
def leader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leader]:
    with Leader(tmp_path_factory.mktemp("ro") / "cluster", tick=1, loss=3) as lead:
        yield lead


@pytest.fixture(scope="module")
def net(leader: Leader) -> Iterator[SimNet]:
    sims = SimNet(leader)
    try:
        sims.add("ro", {"t": "ro"})
        yield sims
    finally:
        sims.close()


def field(label: str, value: str) -> str:
    return f"{label + ':':<14}{value}"


def history(leader: Leader) -> list[list[str]]:
    out = leader.katcall("rollout", "history", "workload", NAME, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == f"workload/{NAME}"
    assert lines[1].split() == ["REVISION", "CREATED", "BY", "IMAGE", "CHANGE-CAUSE"]
    return [line.split(None, 4) for line in lines[2:]]


def ids(leader: Leader) -> set[str]:
    return {
        i.id for i in leader.instances("default", NAME) if i.phase != kat_pb2.Instance.TERMINATING
    }


def test_rollout_history_restart_status_and_undo(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    b = Bundle(tmp_path / "b")
    b.files = {"workload.kat": annotated(service(NAME, replicas=2, selector={"t": "ro"}), "first")}
    leader.katcall("apply", "-f", str(b.write()), "--wait", "--timeout", "60s", check=True)
    b.files = {"workload.kat": service(NAME, replicas=2, image=V2, selector={"t": "ro"})}
    leader.katcall("apply", "-f", str(b.write()), "--wait", "--timeout", "60s", check=True)

    rows = history(leader)
    first, second = rows[0], rows[1]
    assert first[0] == "1" and first[3] == V1 and first[-1].endswith("first"), rows
    assert second[:2] == ["2", "(current)"] and V2 in second[-1] and "image" in second[-1], rows
    actor = first[2]
    assert actor and actor != "-", rows

    # restart: a new generation, every instance replaced by the rolling update, --wait
    # returns once the new ones are ready
    before = ids(leader)
    assert len(before) == 2
    p = leader.katcall("rollout", "restart", "workload", NAME, "--wait", "--timeout", "60s")
    assert p.returncode == 0, p.stderr
    assert f"workload/{NAME} restarted (now generation 3)" in p.stdout
    assert "rollout complete" in p.stdout
    poll(lambda: ids(leader) and not (ids(leader) & before), within=30, what="old instances gone")
    w = leader.workload(NAME)
    assert w.metadata.generation == 3 and w.spec.source.image == V2
    assert history(leader)[-1][0:2] == ["3", "(current)"] and history(leader)[-1][-1].endswith(
        "restart"
    )

    audit = leader.katcall("get", "audit", check=True).stdout.splitlines()
    assert any(
        " restart " in line and f"workload default/{NAME}" in line and line.endswith("OK")
        for line in audit
    ), audit

    # an apply of the unchanged bundle after a restart changes nothing (restartedAt kept)
    again = leader.katcall("apply", "-f", str(b.write()), check=True)
    assert leader.workload(NAME).metadata.generation == 3, again.stdout

    # status of a finished rollout succeeds at once; workload/NAME works too
    st = leader.katcall("rollout", "status", f"workload/{NAME}", "--timeout", "30s")
    assert st.returncode == 0 and "rollout complete" in st.stdout, st.stderr

    # undo to revision 1, waiting; then a plain rollback back, waiting too
    undo = leader.katcall(
        "rollout", "undo", "workload", NAME, "--to-revision", "1", "--wait", "--timeout", "60s"
    )
    assert undo.returncode == 0 and "rollout complete" in undo.stdout, undo.stderr
    assert leader.workload(NAME).spec.source.image == V1
    last = history(leader)[-1]
    assert last[0:2] == ["4", "(current)"] and last[-1].endswith("rollback to revision 1"), last
    back = leader.katcall("rollback", "workload", NAME, "--wait", "--timeout", "60s")
    assert back.returncode == 0 and "rollout complete" in back.stdout, back.stderr
    assert leader.workload(NAME).spec.source.image == V2

    # one revision in full, and the list as JSON
    one = leader.katcall("rollout", "history", "workload", NAME, "--revision", "1", check=True)
    assert "kat.dws.rip/change-cause: first" in one.stdout and V1 in one.stdout
    doc = json.loads(
        leader.katcall("rollout", "history", "workload", NAME, "-o", "json", check=True).stdout
    )
    assert [int(r["revision"]) for r in doc["items"]][-1] == 5
    assert doc["items"][0]["changeCause"] == "first"


def test_rollout_status_fails_when_it_cannot_finish_and_errors_are_clear(
    leader: Leader, net: SimNet, tmp_path: Path
) -> None:
    # no node matches: the instance stays PENDING and status gives up at its timeout
    b = Bundle(
        tmp_path / "stuck", {"workload.kat": service("stuck", replicas=1, selector={"t": "none"})}
    )
    leader.katcall("apply", "-f", str(b.write()), check=True)
    try:
        st = leader.katcall("rollout", "status", "workload", "stuck", "--timeout", "3s")
        assert st.returncode == 1 and "timed out after 3s" in st.stderr, (st.stdout, st.stderr)
        assert "pending" in st.stderr
    finally:
        leader.katcall("delete", "workload", "stuck", check=True)
    missing = leader.katcall("rollout", "history", "workload", "nope")
    assert missing.returncode == 1 and "workload default/nope not found" in missing.stderr
    wrong = leader.katcall("rollout", "status", "node", "x")
    assert wrong.returncode == 1 and "rollout applies to workloads" in wrong.stderr
    no_rev = leader.katcall("rollout", "undo", "workload", NAME, "--to-revision", "99")
    assert no_rev.returncode == 1 and "revision 99" in no_rev.stderr


def test_describe_token_event_and_audit_record(leader: Leader, net: SimNet) -> None:
    leader.katcall(
        "token", "create", "--description", "for-describe", "--max-uses", "2", check=True
    )
    tokens = leader.katcall_json("get", "tokens")["items"]
    tok = next(t for t in tokens if t["description"] == "for-describe")
    p = leader.katcall("describe", "token", tok["id"], check=True)
    assert field("ID", tok["id"]) in p.stdout and field("State", "valid") in p.stdout
    assert field("Uses", "0 of 2") in p.stdout and field("Description", "for-describe") in p.stdout
    assert "not shown" in p.stdout
    events = leader.katcall_json("get", "events", "-A")["items"]
    ev = events[-1]
    e = leader.katcall("describe", "event", ev["id"], check=True)
    assert field("Reason", ev["reason"]) in e.stdout and ev["message"] in e.stdout
    audit = leader.katcall_json("get", "audit")["items"]
    a = leader.katcall("describe", "audit", audit[-1]["id"], check=True)
    assert a.stdout.startswith(f"Audit {audit[-1]['id']}") and "actor:" in a.stdout
    bad = leader.katcall("describe", "token", "nope")
    assert bad.returncode == 1 and "token 'nope' not found" in bad.stderr


def test_top_names_a_node_whose_agent_does_not_answer(leader: Leader, net: SimNet) -> None:
    """The simulated agent serves no Stats (an agent of an older version, or one that is
    down): top says which node and why on stderr, and fails only as no node answered."""
    poll(lambda: ids(leader), within=30, what="rollweb instances")
    p = leader.katcall("top", "instances", timeout=90)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "warning: node ro: unimplemented" in p.stderr and "no running instances" in p.stdout
    n = leader.katcall("top", "nodes", timeout=90)
    assert n.returncode == 1 and "warning: node ro:" in n.stderr
    assert n.stdout.splitlines()[0].split()[:3] == ["NAME", "CPU", "CPU%"]
    bad = leader.katcall("top", "pods")
    assert bad.returncode == 1 and "top shows instances or nodes" in bad.stderr
