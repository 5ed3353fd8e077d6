"""Issue 13 part 5 on a rootless dev cluster (`dev-cluster up --rootless`): deleting a
namespace leaves no workload user (this session's prefix, KAT_WORKLOAD_USER_PREFIX),
home directory or subordinate id range of its workloads on any node, once their last
containers are gone (after the agents' idle_service_seconds, 5 s here)."""

from __future__ import annotations

import pwd
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from kat_agent.node.podman.users import workload_username
from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

WORKLOAD = (
    "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata: {name: NAME, namespace: NS}\n"
    "spec:\n  type: SERVICE\n  replicas: 2\n"
    "  source: {image: registry.kat.local/busybox:latest}\n"
    "  container: {name: main, command: [sleep, '3600']}\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(
        2,
        tmp_path_factory.mktemp("wlusers") / "cluster",
        extra_up_args=["--rootless"],
        # users retire 5 s after their last instance (60 s by default): the same path,
        # a minute less of waiting
        env={"KAT_IDLE_SERVICE_SECONDS": "5"},
    ) as c:
        wait_until(lambda: len(c.ready_nodes()) == 2, timeout=90, what="2 ready nodes")
        yield c


def subid_owners() -> set[str]:
    owners: set[str] = set()
    for table in ("/etc/subuid", "/etc/subgid"):
        owners |= {line.split(":")[0] for line in Path(table).read_text().splitlines()}
    return owners


def user_home(name: str) -> Path | None:
    try:
        return Path(pwd.getpwnam(name).pw_dir)
    except KeyError:
        return None


def test_deleting_a_namespace_leaves_no_workload_user(cluster: DevCluster, tmp_path: Path) -> None:
    c, ns = cluster, f"wl{secrets.token_hex(2)}"
    assert c.katcall("create", "namespace", ns).returncode == 0
    users = []
    for name in ("api", "worker"):
        d = tmp_path / name
        d.mkdir()
        (d / "workload.kat").write_text(WORKLOAD.replace("NAME", name).replace("NS", ns))
        p = c.katcall("apply", "-f", str(d), "--wait", timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        users.append(workload_username(ns, name))
    homes = {u: user_home(u) for u in users}
    for u, home in homes.items():
        assert home is not None and home.is_dir(), f"{u}: no user or home while running"
        assert u in subid_owners()

    assert c.katcall("delete", "namespace", ns, timeout=60).returncode == 0

    def gone() -> bool:
        owners = subid_owners()
        return all(
            user_home(u) is None and not h.exists() and u not in owners  # type: ignore[union-attr]
            for u, h in homes.items()
        )

    # the instances stop, then each agent waits idle_service_seconds (5) before retiring
    wait_until(gone, timeout=300, interval=2, what="workload users, homes and ranges gone")
