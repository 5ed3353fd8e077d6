"""Self-healing under real faults on a 3-node dev cluster (issue 9's "Done when"), driven by
the same module as scripts/chaos (tests/chaos.py): links taken down on the host side,
containers removed behind KAT's back, a Podman service killed, the leader killed during
applies. Copies are counted with Podman on each node."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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


@pytest.mark.xfail(
    reason="known bug (issue 9): after a node's Podman service is killed, the next rollout "
    "sometimes does not complete within 120 s on that node; not yet found",
    strict=False,
)
def test_killed_podman_service(cluster: tuple[DevCluster, chaos.Bundle]) -> None:
    check(chaos.fault_kill_podman(*cluster))


def test_forty_applies_ride_through_a_leader_kill(
    cluster: tuple[DevCluster, chaos.Bundle],
) -> None:
    check(chaos.fault_kill_leader_during_applies(*cluster))


def test_removed_container_comes_back(cluster: tuple[DevCluster, chaos.Bundle]) -> None:
    check(chaos.fault_remove_container(*cluster))
