"""Spare workload users (kat_agent/node/podman/spares.py) on a 1-node rootless dev cluster
with KAT_SPARE_WORKLOAD_USERS=1: a new workload takes the node's ready spare (renamed to
its `kat_wl_<namespace>_<name>`, same uid, its Podman service already running) and a new
spare is made; a spare removed behind KAT's back is replaced and the workload still
starts; a restarted agent adopts its spare instead of making another; deleting the
workload removes its user and leaves the spare."""

from __future__ import annotations

import asyncio
import json
import pwd
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from kat_agent.node.podman.service import ping
from kat_agent.node.podman.users import SPARE_GECOS_PREFIX, username_prefix, workload_username
from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

WORKLOAD = (
    "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata: {name: NAME}\n"
    "spec:\n  type: SERVICE\n  replicas: 1\n"
    "  source: {image: registry.kat.local/busybox:latest}\n"
    "  container: {name: main, command: [sleep, '3600']}\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(
        1,
        tmp_path_factory.mktemp("spares") / "cluster",
        extra_up_args=["--rootless"],
        # users retire 5 s after their last instance (60 s by default): the same path,
        # a minute less of waiting
        env={"KAT_SPARE_WORKLOAD_USERS": "1", "KAT_IDLE_SERVICE_SECONDS": "5"},
    ) as c:
        wait_until(lambda: len(c.ready_nodes()) == 1, timeout=90, what="a ready node")
        yield c


def spares() -> list[pwd.struct_passwd]:
    start = f"{username_prefix()}_spare"
    return [
        pw
        for pw in pwd.getpwall()
        if pw.pw_name.startswith(start) and pw.pw_gecos.startswith(SPARE_GECOS_PREFIX)
    ]


def answers(pw: pwd.struct_passwd) -> bool:
    socks = list(Path(f"/run/user/{pw.pw_uid}").glob("kat-*.sock"))
    return any(asyncio.run(ping(s)) for s in socks)


def ready_spare() -> pwd.struct_passwd | None:
    ready = [pw for pw in spares() if answers(pw)]
    return ready[0] if len(ready) == 1 else None


def apply(c: DevCluster, tmp_path: Path, name: str) -> None:
    d = tmp_path / name
    d.mkdir()
    (d / "workload.kat").write_text(WORKLOAD.replace("NAME", name))
    p = c.katcall("apply", "-f", str(d), "--wait", timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr


def container_uids(name: str) -> set[int]:
    """uids of the conmon processes of this workload's containers (ps, not KAT's word)."""
    uids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"conmon") and b"--exec" not in argv:
                cname = argv[argv.index(b"-n") + 1].decode()
                if cname.startswith(f"kat_default_{name}_"):
                    uids.add(proc.stat().st_uid)
        except (OSError, IndexError, ValueError):
            continue
    return uids


def test_a_new_workload_takes_the_ready_spare(cluster: DevCluster, tmp_path: Path) -> None:
    spare = wait_until(ready_spare, timeout=60, what="a ready spare user")
    name = f"sp{secrets.token_hex(2)}"
    apply(cluster, tmp_path, name)
    user = pwd.getpwnam(workload_username("default", name))
    assert (user.pw_uid, user.pw_dir) == (spare.pw_uid, spare.pw_dir)
    assert user.pw_gecos == f"kat workload default/{name}"
    with pytest.raises(KeyError):
        pwd.getpwnam(spare.pw_name)
    owners = {ln.split(":")[0] for ln in Path("/etc/subuid").read_text().splitlines()}
    assert user.pw_name in owners and spare.pw_name not in owners
    assert container_uids(name) == {user.pw_uid}
    # a new spare is made for the next workload
    again = wait_until(ready_spare, timeout=60, what="a new spare user")
    assert again.pw_uid != spare.pw_uid


def test_a_spare_removed_behind_kats_back_is_replaced(cluster: DevCluster, tmp_path: Path) -> None:
    spare = wait_until(ready_spare, timeout=60, what="a ready spare user")
    cluster.exec("node1", "pkill", "-KILL", "-U", str(spare.pw_uid), check=False)
    cluster.exec("node1", "userdel", "--force", "--remove", spare.pw_name, check=True)
    name = f"sp{secrets.token_hex(2)}"
    apply(cluster, tmp_path, name)  # the workload makes its own user
    assert container_uids(name) == {pwd.getpwnam(workload_username("default", name)).pw_uid}
    wait_until(ready_spare, timeout=90, what="a new spare user")


def test_a_spare_whose_podman_hangs_is_not_handed_out(cluster: DevCluster, tmp_path: Path) -> None:
    """A stuck service (SIGSTOP: it neither answers nor exits, so nothing restarts it)."""
    spare = wait_until(ready_spare, timeout=60, what="a ready spare user")
    cluster.exec("node1", "pkill", "-STOP", "-U", str(spare.pw_uid), "podman", check=False)
    wait_until(lambda: not answers(spare), timeout=30, what="the spare's service stuck")
    name = f"sp{secrets.token_hex(2)}"
    apply(cluster, tmp_path, name)
    uid = pwd.getpwnam(workload_username("default", name)).pw_uid
    assert container_uids(name) == {uid}
    got = json.loads(cluster.katcall("get", "instances", "-o", "json", check=True).stdout)
    mine = [i for i in got["items"] if i.get("workload") == name]
    assert len(mine) == 1 and not mine[0].get("restartCount"), mine  # it never failed
    wait_until(ready_spare, timeout=90, what="a new spare user")


def test_a_restarted_agent_adopts_its_spare(cluster: DevCluster, tmp_path: Path) -> None:
    spare = wait_until(ready_spare, timeout=60, what="a ready spare user")
    # (a spare an earlier test broke may still be on its way out: it counts as one too)
    before = {pw.pw_uid for pw in spares()}
    cluster.kill("node1")
    # its Podman services die with the agent (their parent-death signal)
    wait_until(lambda: not answers(spare), timeout=30, what="the spare's service gone")
    cluster.start("node1")
    wait_until(lambda: len(cluster.ready_nodes()) == 1, timeout=90, what="the node ready again")
    adopted = wait_until(ready_spare, timeout=60, what="a spare's service again")
    assert adopted.pw_uid in before  # adopted, not made anew
    wait_until(lambda: len(spares()) == 1, timeout=30, what="only the adopted spare left")


def test_deleting_the_workload_removes_its_user_not_the_spare(
    cluster: DevCluster, tmp_path: Path
) -> None:
    wait_until(ready_spare, timeout=60, what="a ready spare user")
    name = f"sp{secrets.token_hex(2)}"
    apply(cluster, tmp_path, name)
    username = workload_username("default", name)
    pwd.getpwnam(username)
    assert cluster.katcall("delete", "workload", name).returncode == 0

    def gone() -> bool:
        try:
            pwd.getpwnam(username)
        except KeyError:
            return True
        return False

    # the instance stops, then the agent waits idle_service_seconds (5) before retiring
    wait_until(gone, timeout=150, interval=1, what=f"user {username} removed")
    wait_until(ready_spare, timeout=60, what="the spare still there")
