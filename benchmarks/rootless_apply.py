"""`bench_apply.py --rootless`: apply to RUNNING of a fresh rootless workload (a new
workload user every run) against a bare rootless `podman run -d` of the same image as a
fresh user with the same storage (the node's driver and shared image store), medians of
`--runs`; then a ~200 MB image (busybox plus a 200 MB random layer, built on the node):
one fresh workload and one bare run of it, and the disk used by 10 replicas.

Last line: `ratio=R driver=D` (R: KAT median / bare median for busybox; D: the workload
users' storage driver, fuse-overlayfs / overlay / vfs). Every user it makes is removed.

With spare workload users on (the default), each timed step, KAT's and the bare run
alike, starts only once the node's spare is ready and the node is quiet: the spare made
after the previous run must not compete with either side.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import secrets
import statistics
import subprocess
import time
from pathlib import Path

from api.v1alpha1 import kat_pb2
from kat_agent.node.podman.imagestore import RootlessDriver, storage_conf
from kat_agent.node.podman.service import ping
from kat_agent.node.podman.users import (
    SPARE_GECOS_PREFIX,
    WorkloadUser,
    ensure_workload_user,
    remove_workload_user,
    username_prefix,
    workload_username,
)
from katcall.client import Client
from tests.devcluster import DevCluster, wait_until

BIG = "localhost/kat-bench-big:latest"
BIG_MB = 200
NAMESPACE = "default"
BARE_NAMESPACE = "kbare"
HOME_BASE = Path("/var/lib/kat-workloads")
# Our own user prefix: never meets the users of a KAT running on this machine.
os.environ.setdefault("KAT_WORKLOAD_USER_PREFIX", f"kb{secrets.token_hex(2)}_")


def _du(*paths: Path) -> int:
    """Bytes used on disk under paths (one file system each: not into FUSE mounts)."""
    total = 0
    for p in paths:
        if p.exists():
            out = subprocess.run(
                ["du", "-sx", "--block-size=1", str(p)], capture_output=True, text=True
            ).stdout
            total += int(out.split()[0]) if out.strip() else 0
    return total


def _user_conf(name: str) -> tuple[RootlessDriver, Path | None, Path]:
    """The workload user's storage (driver, shared store, its home) from the
    storage.conf the node agent wrote."""
    home = Path(pwd.getpwnam(workload_username(NAMESPACE, name)).pw_dir)  # a spare's home
    confs = sorted((home / ".config" / "containers").glob("kat-*-storage.conf"))
    if not confs:
        raise SystemExit(f"no storage.conf of the node agent in {home}")
    text = confs[0].read_text()
    drv = re.search(r'^driver = "(\w+)"', text, re.M)
    prog = re.search(r'^mount_program = "([^"]+)"', text, re.M)
    store = re.search(r'^additionalimagestores = \["([^"]+)"\]', text, re.M)
    driver = RootlessDriver(drv.group(1) if drv else "?", prog.group(1) if prog else None)
    if store:
        driver = RootlessDriver(driver.name, driver.mount_program, shared=True)
    return driver, Path(store.group(1)) if store else None, home


def spare_ready() -> bool:
    """A spare workload user of this bench's node answers on its Podman socket."""
    start = f"{username_prefix()}_spare"
    for pw in pwd.getpwall():
        if pw.pw_name.startswith(start) and pw.pw_gecos.startswith(SPARE_GECOS_PREFIX):
            for sock in Path(f"/run/user/{pw.pw_uid}").glob("kat-*.sock"):
                if asyncio.run(ping(sock)):
                    return True
    return False


def wait_quiet(spares: int) -> None:
    """Until the node's spare (if any) is ready; then until a second passes with the
    machine's CPU at most 30% busy (the spare's start and the last delete settled)."""
    if spares:
        wait_until(spare_ready, timeout=120, interval=0.1, what="spare workload user ready")

    def quiet() -> bool:
        def busy() -> tuple[int, int]:
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            return sum(f) - f[3] - f[4], sum(f)

        b0, t0 = busy()
        time.sleep(1.0)
        b1, t1 = busy()
        return (b1 - b0) / max(1, t1 - t0) <= 0.3

    wait_until(quiet, timeout=60, interval=0, what="machine quiet")


def apply_until_running(client: Client, name: str, image: str, replicas: int = 1) -> float:
    """Apply to RUNNING (bench_apply's), with room for a first copy into the shared store."""
    from benchmarks import bench_apply

    return bench_apply.apply_until_running(client, name, replicas, image=image, timeout=600)


def delete(client: Client, name: str) -> None:
    client.delete_workload(kat_pb2.DeleteWorkloadRequest(namespace=NAMESPACE, name=name))
    wait_until(
        lambda: (
            not client.list_instances(
                kat_pb2.ListInstancesRequest(namespace=NAMESPACE, workload=name)
            ).items
        ),
        timeout=120,
        what=f"{name} gone",
    )


class Bare:
    """Fresh users running `podman run -d` with the node's storage setup."""

    def __init__(self, c: DevCluster, node: str, driver: RootlessDriver, store: Path | None):
        self.c, self.node, self.driver, self.store = c, node, driver, store
        self.names: list[str] = []

    def run(self, image: str) -> float:
        name = f"b{len(self.names)}{secrets.token_hex(2)}"
        self.names.append(name)
        user = ensure_workload_user(BARE_NAMESPACE, name, home_base=HOME_BASE)
        conf = self._conf(user)
        env = {**user.env(), "CONTAINERS_STORAGE_CONF": str(conf)}
        cmd = [
            "setpriv",
            f"--reuid={user.uid}",
            f"--regid={user.gid}",
            "--clear-groups",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            "sh",
            "-c",
            'cd "$HOME" && exec podman "$@"',
            "podman",
        ]
        t0 = time.perf_counter()
        self.c.exec(self.node, *cmd, "run", "-d", image, "sleep", "3600", check=True, timeout=600)
        return time.perf_counter() - t0

    def _conf(self, user: WorkloadUser) -> Path:
        home = user.home
        conf = home / "bare-storage.conf"
        conf.write_text(
            storage_conf(
                self.driver, home / "storage", Path(f"/run/user/{user.uid}/bare"), self.store
            )
        )
        return conf

    def cleanup(self) -> None:
        for name in self.names:
            remove_workload_user(BARE_NAMESPACE, name)


def node_podman_flags(c: DevCluster, node: str) -> list[str]:
    """Flags that make `podman` use dev-cluster node `node`'s own root storage."""
    nd = Path(c.node(node)["data_dir"])
    return [
        "--root",
        str(nd / "podman" / "root"),
        "--runroot",
        f"/run/kat-dev/{c.node(node)['netns']}",
        "--tmpdir",
        str(nd / "podman" / "tmp"),
    ]


def build_big(c: DevCluster, node: str, base_image: str) -> None:
    """busybox plus a layer of one 200 MB random file, in the node's root storage."""
    nd = Path(c.node(node)["data_dir"])
    flags = node_podman_flags(c, node)
    ctx = nd / "bench-big"
    ctx.mkdir(exist_ok=True)
    (ctx / "Containerfile").write_text(
        f"FROM {base_image}\nRUN head -c {BIG_MB * 1000 * 1000} /dev/urandom > /big.bin\n"
    )
    c.exec(node, "podman", *flags, "build", "-q", "-t", BIG, str(ctx), check=True, timeout=600)


def run(
    c: DevCluster, client: Client, image: str, runs: int, out: list[str], spares: int = 1
) -> str:
    only = c.node("node1")["name"]
    used: list[str] = []
    try:
        used.append("warm")
        apply_until_running(client, "warm", image)  # the image into the shared store once
        driver, store, _ = _user_conf("warm")
        delete(client, "warm")
        bare = Bare(c, "node1", driver, store)
        try:
            kat, plain = [], []
            for i in range(runs):
                name = f"rl{i}{secrets.token_hex(2)}"
                used.append(name)
                wait_quiet(spares)
                kat.append(apply_until_running(client, name, image))
                delete(client, name)
                wait_quiet(spares)
                plain.append(bare.run(image))
            mk, mp = statistics.median(kat), statistics.median(plain)
            out.append(
                f"rootless: apply fresh 1-replica workload (new user) to RUNNING: median "
                f"{mk:.3f} s over {runs} runs; bare rootless podman run -d as a fresh user: "
                f"median {mp:.3f} s; ratio {mk / mp:.2f} (target <= 1.5); node {only}, "
                f"driver {driver.label}, shared store {store}, spare users {spares}"
            )
            out.append(f"  kat runs: {' '.join(f'{t:.2f}' for t in kat)}")
            out.append(f"  bare runs: {' '.join(f'{t:.2f}' for t in plain)}")

            build_big(c, "node1", image)

            # Every home of this bench's workload users (spares, made ahead, among them),
            # not the bare runs'
            def homes() -> list[Path]:
                bare_users = f"{username_prefix()}{BARE_NAMESPACE}_"
                return [
                    h
                    for h in sorted(HOME_BASE.glob(f"{username_prefix()}*"))
                    if not h.name.startswith(bare_users)
                ]

            before = _du(*(p for p in (store,) if p), *homes())
            used.append("big1")
            tb = apply_until_running(client, "big1", BIG)
            tbb = bare.run(BIG)
            out.append(
                f"rootless {BIG_MB} MB image: fresh workload to RUNNING {tb:.2f} s (its first "
                f"use on the node: loaded into the shared store); bare podman run -d as a "
                f"fresh user {tbb:.2f} s"
            )
            delete(client, "big1")
            mid = _du(*(p for p in (store,) if p), *homes())
            used.append("big10")
            t10 = apply_until_running(client, "big10", BIG, 10)
            after = _du(*(p for p in (store,) if p), *homes())
            per = (after - mid) / 10
            out.append(
                f"rootless {BIG_MB} MB image, 10 replicas: RUNNING in {t10:.2f} s; disk: "
                f"shared store + users {(mid - before) / 1e6:.0f} MB for the image, then "
                f"{(after - mid) / 1e6:.1f} MB for 10 replicas ({per / 1e6:.2f} MB per "
                f"replica); total {(after - before) / 1e6:.0f} MB = "
                f"{(after - before) / (BIG_MB * 1e6):.2f} x the image"
            )
            delete(client, "big10")
        finally:
            bare.cleanup()
        ratio = mk / mp
        return f"ratio={ratio:.2f} driver={driver.label}"
    finally:
        for name in used:
            try:
                remove_workload_user(NAMESPACE, name)
            except Exception as exc:  # noqa: BLE001 - report and go on cleaning
                print(f"could not remove the user of {name}: {exc}")
