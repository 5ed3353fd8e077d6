"""`--log-format json` on a real 3-member dev cluster: through joins, refused joins,
an agent crash and restart and a leader failover, every line of every node's agent
log is one JSON object with a UTC millisecond timestamp (gRPC's own `I1201 ...`
lines included: silenced), and repeated refusals are held back with a count."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(
        3,
        tmp_path_factory.mktemp("jsonlogs") / "cluster",
        etcd_members=3,
        extra_up_args=["--agent-arg=--log-format=json"],
    ) as c:
        c.katcall("get", "nodes", check=True)  # teaches the config every member's endpoint
        yield c


def leader(c: DevCluster) -> str:
    return next(n["metadata"]["name"] for n in c.nodes_json() if n["status"].get("leader"))


def test_every_log_line_is_json_through_failures_and_a_failover(
    cluster: DevCluster, tmp_path: Path
) -> None:
    c = cluster
    # joins the leader refuses (the right CA, a wrong secret), several times in a row
    real = c.katcall("token", "create", "--quiet", check=True).stdout.strip()
    wrong = real.rsplit(".", 1)[0] + "." + "x" * len(real.rsplit(".", 1)[1])
    for i in range(4):
        p = c.exec(
            "node3",
            "kat-agent",
            "join",
            "--leader",
            f"{c.address('node1')}:9115",
            "--token",
            wrong,
            "--data-dir",
            str(tmp_path / f"j{i}"),
            "--advertise-address",
            c.address("node3"),
            "--log-format",
            "json",
            timeout=60,
        )
        assert p.returncode != 0
    # an agent crash and restart
    c.kill("node3")
    restarted = time.time()
    c.start("node3")
    # node3 (an etcd member) must be back before a second member dies, or etcd has no
    # quorum and no leader can be elected: wait for a heartbeat of the restarted agent
    wait_until(
        lambda: heartbeat_after(c, "node3", restarted), timeout=90, interval=1, what="node3 back"
    )
    # the leader dies; another member takes over; the old one comes back
    old = leader(c)
    c.kill(c.node(old)["key"])
    wait_until(lambda: (n := leader(c)) and n != old, timeout=60, interval=1, what="a new leader")
    c.start(c.node(old)["key"])
    wait_until(
        lambda: all(n["status"].get("condition") == "READY" for n in c.nodes_json()),
        timeout=90,
        interval=1,
        what="every node READY again",
    )
    seen_components: set[str] = set()
    for node in c.state()["nodes"]:
        log = Path(node["log"])
        lines = log.read_text().splitlines()
        assert lines, f"{log} is empty"
        for n, line in enumerate(lines, 1):
            if not line or line.startswith("=== dev-cluster "):
                continue  # the harness marks each start of the agent in its log
            try:
                doc = json.loads(line)
            except ValueError:
                pytest.fail(f"{log}:{n} is not JSON: {line[:200]!r}")
            assert isinstance(doc, dict) and TIME.match(doc["time"]), (log, n, line)
            assert doc["level"] and doc["component"] and "msg" in doc
            seen_components.add(doc["component"])
    assert "kat_agent.member" in seen_components
    # the leader then logged the first refusal only; the next one through says how many
    leader_log = Path(c.node("node1")["log"]).read_text()
    assert leader_log.count("refused: PERMISSION_DENIED") == 1 or "more like it" in leader_log


def heartbeat_after(c: DevCluster, ref: str, t: float) -> bool:
    name = c.node(ref).get("name")
    for n in c.nodes_json():
        if n["metadata"]["name"] == name:
            beat = n["status"].get("lastHeartbeat", "")
            if beat:
                stamp = datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp()
                return stamp > t + 1 and n["status"].get("condition") == "READY"
    return False
