"""High availability on a real dev cluster with 3 etcd members: failover with
nothing acknowledged lost, quorum loss answered clearly, and recovery."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from internal.security import clientconfig
from katcall.client import CallError, Client
from tests import chaos
from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

LEADER_TTL = 5  # kat_agent.member.leader_ttl for the dev cluster (nodeLossTimeoutSeconds 5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(3, tmp_path_factory.mktemp("ha") / "cluster", etcd_members=3) as c:
        # the first call teaches the saved config every member's endpoint
        c.katcall("get", "nodes", check=True)
        yield c


def nodes(c: DevCluster) -> dict[str, dict]:
    return {n["metadata"]["name"]: n for n in c.nodes_json()}


def leader(c: DevCluster) -> str:
    return next(n for n, v in nodes(c).items() if v["status"].get("leader"))


def key_of(c: DevCluster, name: str) -> str:
    return c.node(name)["key"]


def client(c: DevCluster) -> Client:
    assert c.katconfig is not None
    return Client(clientconfig.load(c.katconfig).context())


def list_nodes_answered(c: DevCluster) -> bool:
    """katcall's own client and config (not its interpreter start-up), one fresh try."""
    with client(c) as fresh:
        try:
            fresh.list_nodes(kat_pb2.ListRequest(), timeout=5)
        except CallError:
            return False
    return True


def test_three_members_one_leader(cluster: DevCluster) -> None:
    ns = nodes(cluster)
    assert all(v["status"].get("etcdMember") for v in ns.values())
    assert sum(1 for v in ns.values() if v["status"].get("leader")) == 1
    cfg = clientconfig.load(cluster.katconfig)  # type: ignore[arg-type]
    assert len(cfg.context().endpoints) == 3


def test_losing_one_member_changes_nothing_two_loses_quorum(cluster: DevCluster) -> None:
    lead = leader(cluster)
    others = [n for n in nodes(cluster) if n != lead]
    cluster.kill(key_of(cluster, others[0]))
    assert cluster.katcall("token", "create", "-q").returncode == 0
    assert leader(cluster) == lead
    cluster.kill(key_of(cluster, others[1]))

    def no_quorum() -> str:
        p = cluster.katcall("get", "nodes", timeout=30)
        return p.stderr if p.returncode != 0 and "no quorum" in p.stderr else ""

    started = time.monotonic()
    message = wait_until(no_quorum, timeout=30, interval=0.5, what="a 'no quorum' answer")
    assert "no quorum" in message
    p = cluster.katcall("get", "nodes", timeout=30)
    assert p.returncode != 0 and time.monotonic() - started < 60  # answered, not hung
    for name in others:
        cluster.start(key_of(cluster, name))
    wait_until(lambda: cluster.katcall("get", "nodes").returncode == 0, timeout=60, what="recovery")
    wait_until(lambda: len(cluster.ready_nodes()) == 3, timeout=60, what="all READY")


def raft_leader(c: DevCluster) -> str | None:
    """The key of the node whose etcd member leads raft, from etcd itself (etcdctl with
    each node's own etcd client certificate)."""
    for n in c.state()["nodes"]:
        pki = Path(n["data_dir"]) / "pki" / "etcd"
        try:
            p = subprocess.run(
                [
                    "etcdctl",
                    f"--endpoints=https://{n['address']}:2379",
                    f"--cacert={pki / 'ca.crt'}",
                    f"--cert={pki / 'client.crt'}",
                    f"--key={pki / 'client.key'}",
                    "--command-timeout=2s",
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except subprocess.TimeoutExpired:
            continue
        if p.returncode != 0:
            continue
        status = json.loads(p.stdout)[0]["Status"]
        if status["leader"] == status["header"]["member_id"]:
            return str(n["key"])
    return None


def _raft_leader_elsewhere(c: DevCluster) -> tuple[str, str]:
    """(the KAT leader's node, the node holding raft leadership): they differ, as the KAT
    leader moves raft leadership off its own member (raft_leader.py)."""
    wait_until(lambda: len(c.ready_nodes()) == 3, timeout=60, what="all READY")
    lead = key_of(c, leader(c))
    raft = wait_until(
        lambda: (r := raft_leader(c)) is not None and r != lead and r,
        timeout=30,
        what="raft leadership on a follower node",
    )
    return lead, raft


def _token_created_once(c: DevCluster, lead: str, what: str) -> None:
    description = f"raft-{secrets.token_hex(3)}"
    started = time.monotonic()
    p = c.katcall("token", "create", "-q", "--description", description, timeout=60)
    print(f"token create as the raft leader {what}: {time.monotonic() - started:.2f}s")
    assert p.returncode == 0, p.stderr
    stored = json.loads(c.katcall("token", "list", "-o", "json", check=True).stdout)
    assert [t["description"] for t in stored["items"]].count(description) == 1
    assert key_of(c, leader(c)) == lead


def test_a_write_as_the_raft_leader_dies_is_applied_once(cluster: DevCluster) -> None:
    """The CI failure of round 3: a write forwarded to a raft leader that has just died
    gets no answer. KAT reads it back (internal/state/etcd_outcome.py) and sends it again
    only if it was provably not applied: the user's call succeeds, and the token exists
    exactly once."""
    lead, raft = _raft_leader_elsewhere(cluster)
    cluster.kill(raft)
    try:
        _token_created_once(cluster, lead, "died")
    finally:
        cluster.start(raft)
    wait_until(lambda: len(cluster.ready_nodes()) == 3, timeout=60, what="all READY again")


def test_a_write_as_the_raft_leader_is_cut_off_is_applied_once(cluster: DevCluster) -> None:
    """The same write, the raft leader's node silently cut off (the host side of its veth
    down, nothing killed): its member keeps running, and believes it leads, until the link
    comes back. The call succeeds, the token exists once, and the node rejoins."""
    lead, raft = _raft_leader_elsewhere(cluster)
    with chaos.partitioned(cluster, raft):
        _token_created_once(cluster, lead, "is cut off")
    wait_until(lambda: len(cluster.ready_nodes()) == 3, timeout=60, what="all READY again")
    wait_until(lambda: raft_leader(cluster) is not None, timeout=30, what="one raft leader")


def test_leader_failover_loses_no_acknowledged_write(cluster: DevCluster) -> None:
    before = nodes(cluster)
    old = leader(cluster)
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        c = client(cluster)
        try:
            while not stop.is_set():
                try:
                    resp = c.create_token(kat_pb2.CreateTokenRequest(description="ha"))
                except CallError:
                    time.sleep(0.05)  # leaderless moment: try again, like a user would
                    continue
                acked.append(resp.token.id)
        finally:
            c.close()

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acked) >= 50, timeout=60, what="50 writes before the kill")
        cluster.kill(key_of(cluster, old))
        killed = time.monotonic()
        served = wait_until(
            lambda: list_nodes_answered(cluster) and time.monotonic(),
            timeout=LEADER_TTL + 15,
            interval=0.1,
            what="an API answer after the leader was killed",
        )
        assert cluster.katcall("get", "nodes").returncode == 0  # and katcall itself
        failover = served - killed
        wait_until(lambda: len(acked) >= 120, timeout=60, what="120 acknowledged writes")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    print(f"failover: first API answer {failover:.2f}s after the leader was killed")
    assert failover <= LEADER_TTL + 5, f"failover took {failover:.1f}s"
    new = leader(cluster)
    assert new != old
    stored = json.loads(cluster.katcall("token", "list", "-o", "json", check=True).stdout)
    ids = {t["id"] for t in stored["items"]}
    missing = [i for i in acked if i not in ids]
    assert not missing, f"{len(missing)} acknowledged writes lost"
    assert len(acked) >= 100
    after = nodes(cluster)
    assert set(after) == set(before)
    assert {n: v["status"]["subnet"] for n, v in after.items()} == {
        n: v["status"]["subnet"] for n, v in before.items()
    }
    wait_until(
        lambda: nodes(cluster)[old]["status"]["condition"] == "NOT_READY",
        timeout=30,
        what="the killed node NOT_READY",
    )
    # the deposed leader comes back as a follower
    cluster.start(key_of(cluster, old))
    wait_until(
        lambda: nodes(cluster)[old]["status"]["condition"] == "READY",
        timeout=60,
        what="old leader READY again",
    )
    assert leader(cluster) == new


def test_removing_members_keeps_quorum_rules(cluster: DevCluster) -> None:
    lead = leader(cluster)
    p = cluster.katcall("node", "remove", lead)
    assert p.returncode != 0 and "is the leader" in p.stderr
    p = cluster.katcall("node", "remove", "no-such-node")
    assert p.returncode != 0 and "not found" in p.stderr


def test_removing_a_follower_member(cluster: DevCluster) -> None:
    wait_until(lambda: len(cluster.ready_nodes()) == 3, timeout=60, what="all READY")
    lead = leader(cluster)
    follower = next(n for n in nodes(cluster) if n != lead)
    wait_until(
        lambda: cluster.katcall("node", "remove", follower, timeout=60).returncode == 0,
        timeout=60,
        what=f"removal of {follower}",
    )
    assert follower not in nodes(cluster)
    # Seen once: KAT's leadership moved too (likely when the removed member led
    # etcd's raft). What must hold is that a leader remains.
    after = wait_until(lambda: leader(cluster), timeout=30, what="a leader after the removal")
    assert after != follower
    assert len(clientconfig.load(cluster.katconfig).context().endpoints) == 2  # type: ignore[arg-type]
    assert "NodeRemoved" in cluster.katcall("get", "events", check=True).stdout
