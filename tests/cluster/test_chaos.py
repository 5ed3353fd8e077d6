"""Self-healing under real faults on a 3-node dev cluster (issue 9's "Done when"), driven by
the same module as scripts/chaos (tests/chaos.py): links taken down on the host side,
containers removed behind KAT's back, a Podman service killed, the leader killed during
applies. Copies are counted with Podman on each node."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import chaos
from tests.devcluster import DevCluster, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevCluster, chaos.Bundle]]:
    base = tmp_path_factory.mktemp("chaos")
    with DevCluster(3, base / "cluster", etcd_members=3) as c:
        bundle = chaos.Bundle(base / "bundle")
        chaos.prepare(c, bundle)
        yield c, bundle


def check(result: chaos.Result) -> None:
    print("\n".join(result.lines()))
    failed = [k for k, v in result.checks.items() if not v]
    assert not failed, f"{result.fault}: {failed}; {result.notes}"


def test_partitioned_follower_heals(cluster: tuple[DevCluster, chaos.Bundle]) -> None:
    check(chaos.fault_partition_follower(*cluster))


def test_partitioned_leader_heals(cluster: tuple[DevCluster, chaos.Bundle]) -> None:
    check(chaos.fault_partition_leader(*cluster))


def test_killed_podman_service(cluster: tuple[DevCluster, chaos.Bundle]) -> None:
    check(chaos.fault_kill_podman(*cluster))


def test_twenty_applies_ride_through_a_leader_kill(
    cluster: tuple[DevCluster, chaos.Bundle],
) -> None:
    # The case: 20 applies in a row, the leader killed among them (15 of 20 used to
    # fail). `scripts/chaos` runs 40.
    check(chaos.fault_kill_leader_during_applies(*cluster, count=20, kill_after=5))


def test_wait_follows_the_leader_from_a_follower_endpoint(
    cluster: tuple[DevCluster, chaos.Bundle], tmp_path: Path
) -> None:
    """A katconfig that names a follower first (the leader moved since it was saved):
    `apply --wait` still follows the rollout to its end. (It used to watch the follower,
    which answered "not the leader" again and again until the timeout.)"""
    c, bundle = cluster
    assert c.katconfig is not None
    lead = chaos.leader_name(c)
    follower = next(n["address"] for n in c.state()["nodes"] if n["name"] != lead)
    cfg = yaml.safe_load(c.katconfig.read_text())
    for ctx in cfg["contexts"]:
        first = [e for e in ctx["endpoints"] if e.rsplit(":", 1)[0] == follower]
        ctx["endpoints"] = first + [e for e in ctx["endpoints"] if e not in first]
    path = tmp_path / "follower-first.katconfig"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    p = subprocess.run(
        [
            *c.state()["katcall_cmd"],
            "apply",
            "-f",
            str(bundle.write(greeting="via-follower").dir),
            "--wait",
            "--timeout",
            "90s",
        ],
        capture_output=True,
        text=True,
        env={**c.env, "KATCONFIG": str(path)},
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "rollout complete" in p.stdout


def test_removed_container_comes_back(cluster: tuple[DevCluster, chaos.Bundle]) -> None:
    check(chaos.fault_remove_container(*cluster))


def test_podman_that_forgets_its_containers(cluster: tuple[DevCluster, chaos.Bundle]) -> None:
    check(chaos.fault_podman_forgets(*cluster))
