"""The audit trail on a real 3-node dev cluster: token creation, namespace creation
and deletion, an apply and an exec show up in `katcall get audit` with the admin's
certificate name, a second admin (alice) is named as such, refusals are recorded
with their outcome, and the leader's audit.log is 0600 JSON lines."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

WORKLOAD = (
    "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata: {name: NAME}\n"
    "spec:\n  type: SERVICE\n  source: {image: registry.kat.local/busybox:latest}\n"
    "  container: {name: main, command: [sleep, '3600']}\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(3, tmp_path_factory.mktemp("audit") / "cluster") as c:
        yield c


def audit(c: DevCluster, *args: str) -> list[dict]:
    p = c.katcall("get", "audit", "-o", "json", *args)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["items"]


def bundle(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "workload.kat").write_text(WORKLOAD.replace("NAME", name))
    return d


def alice_config(c: DevCluster, tmp: Path) -> Path:
    """A second admin, alice, made as the docs say: `katcall admin create alice`."""
    path = tmp / "alice.katconfig"
    p = c.katcall("admin", "create", "alice", "-o", str(path), timeout=60)
    assert p.returncode == 0, p.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    return path


def test_mutating_calls_are_audited_with_the_actor(cluster: DevCluster, tmp_path: Path) -> None:
    c = cluster
    assert c.katcall("token", "create", "--quiet").returncode == 0
    assert c.katcall("create", "namespace", "team-a").returncode == 0
    p = c.katcall("apply", "-f", str(bundle(tmp_path, "probe")), "--wait", timeout=240)
    assert p.returncode == 0, p.stderr
    p = c.katcall("exec", "probe", "--", "true", timeout=60)
    assert p.returncode == 0, p.stderr
    assert c.katcall("delete", "namespace", "team-a").returncode == 0
    refused = c.katcall("cordon", "no-such-node")
    assert refused.returncode != 0

    def seen() -> dict[tuple[str, str], dict]:
        return {(r["verb"], r["object"]): r for r in audit(c)}

    wanted = [
        ("create", "namespace team-a"),
        ("apply", "workload default/probe"),
        ("exec", "workload default/probe"),
        ("delete", "namespace team-a"),
    ]
    records = wait_until(lambda: (s := seen()) and all(w in s for w in wanted) and s, timeout=30)
    for w in wanted:
        assert records[w]["actor"] == "admin" and records[w]["outcome"] == "OK", records[w]
    tokens = [
        r for (verb, obj), r in records.items() if verb == "create" and obj.startswith("token ")
    ]
    assert tokens and tokens[0]["actor"] == "admin"
    assert records[("cordon", "node no-such-node")]["outcome"] == "NOT_FOUND"
    # reads are not audited, and --since filters
    assert not [r for r in records.values() if r["verb"] in ("list", "get")]
    assert audit(c, "--since", "1h") and len(audit(c, "--since", "1h")) == len(records)

    # a second admin is named as herself
    alice = alice_config(c, tmp_path)
    env = {**c.env, "KATCONFIG": str(alice)}
    p = subprocess.run(
        ["katcall", "apply", "-f", str(bundle(tmp_path, "alices"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    mine = wait_until(
        lambda: [r for r in audit(c) if r["object"] == "workload default/alices"], timeout=30
    )
    assert mine[0]["actor"] == "alice" and mine[0]["verb"] == "apply"
    made = [r for r in audit(c) if r["verb"] == "create" and r["object"] == "admin alice"]
    assert made and made[0]["actor"] == "admin" and made[0]["outcome"] == "OK", made

    # the leader's audit log: 0600, one JSON object per line, the same records
    log = Path(c.node("node1")["data_dir"]) / "audit.log"
    assert log.stat().st_mode & 0o777 == 0o600
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["actor"] == "alice" and r["object"] == "workload default/alices" for r in lines)
    assert all(r["time"].endswith("Z") for r in lines)
    for name in ("probe", "alices"):
        c.katcall("delete", "workload", name)
