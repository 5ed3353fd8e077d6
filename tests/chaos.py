"""Faults on a real dev cluster, each measured: the one module behind `scripts/chaos` (for
users checking their own machine) and tests/cluster/test_chaos.py (which asserts the
issue's "Done when" list on the same numbers).

Every fault is made the way the world makes it: a link taken down on the host side of a
node's veth (nothing killed), a container removed behind KAT's back, a Podman service
killed, the leader's agent killed (SIGKILL) in the middle of a series of applies. Copies
are counted with Podman itself on each node (its own storage), not through KAT.

Each `fault_*` function takes a `DevCluster` (3 nodes, 3 etcd members) that runs the
workload of `Bundle` (applied by `prepare`) and returns a `Result`: what happened, with
timings in seconds, and the checks a test asserts. The functions leave the cluster as
they found it (links up, agents running, the workload back at its replicas), also when a
step times out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.security import clientconfig, rpc
from katcall.client import CallError, Client
from tests.devcluster import REPO, DevCluster

NAMESPACE = "default"
LABEL_WORKLOAD = "kat.dws.rip/workload"
RUNROOT_BASE = Path("/run/kat-dev")  # scripts/dev-cluster: runroot_of()


@dataclass
class Result:
    fault: str
    timings: dict[str, float] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def lines(self) -> list[str]:
        out = [f"{self.fault}: {'OK' if self.ok else 'FAILED'}"]
        out += [f"  {k:<34} {v:7.1f} s" for k, v in self.timings.items()]
        out += [f"  {k:<34} {'yes' if v else 'NO'}" for k, v in self.checks.items()]
        out += [f"  note: {n}" for n in self.notes]
        return out


class Bundle:
    """A copy of examples/web in `dir`, with replicas and a GREETING to change."""

    def __init__(self, dir: Path, name: str = "web", replicas: int = 3) -> None:
        self.dir = dir
        self.name = name
        self.replicas = replicas
        self.greeting = "hello"
        shutil.copytree(REPO / "examples" / "web", dir, dirs_exist_ok=True)
        self._source = (dir / "workload.kat").read_text()
        # A patient health check: on a loaded machine (two cores, several clusters) the
        # example's 2 s timeout x 3 turns a busy moment into restarts, and the timings
        # would measure the machine, not KAT's reaction to the fault.
        vlb = dir / "VirtualLoadBalancer.kat"
        text = vlb.read_text().replace("periodSeconds: 5", "periodSeconds: 6")
        text = text.replace("timeoutSeconds: 2", "timeoutSeconds: 6")
        vlb.write_text(text.replace("failureThreshold: 3", "failureThreshold: 5"))
        self.write()

    def write(self, replicas: int | None = None, greeting: str | None = None) -> Bundle:
        if replicas is not None:
            self.replicas = replicas
        if greeting is not None:
            self.greeting = greeting
        text = self._source.replace("replicas: 3", f"replicas: {self.replicas}")
        text = text.replace("value: hello", f"value: {self.greeting}")
        (self.dir / "workload.kat").write_text(text)
        return self


# ------------------------------------------------------------------ observing


def wait_for(fn: Callable[[], Any], timeout: float, interval: float = 0.25) -> float | None:
    """Seconds until fn() is truthy, or None after `timeout`."""
    start = time.monotonic()
    while True:
        try:
            if fn():
                return time.monotonic() - start
        except (CallError, OSError, subprocess.SubprocessError, ValueError, KeyError):
            pass
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


def client(c: DevCluster, request_timeout: float = 0.0) -> Client:
    assert c.katconfig is not None
    return Client(clientconfig.load(c.katconfig).context(), request_timeout=request_timeout)


def instances(c: DevCluster, name: str) -> list[kat_pb2.Instance]:
    with client(c, 5) as k:
        items = k.list_instances(kat_pb2.ListInstancesRequest(namespace=NAMESPACE)).items
    return [i for i in items if i.workload == name]


def workload(c: DevCluster, name: str) -> kat_pb2.Workload:
    with client(c, 5) as k:
        return k.get_workload(kat_pb2.ObjectRef(namespace=NAMESPACE, name=name))


def ready_on(c: DevCluster, name: str, exclude: str = "") -> int:
    """Ready instances of the workload that KAT reports, not counting node `exclude`."""
    return sum(
        1
        for i in instances(c, name)
        if i.ready and i.phase == kat_pb2.Instance.RUNNING and i.node != exclude
    )


def nodes(c: DevCluster) -> dict[str, kat_pb2.Node]:
    with client(c, 5) as k:
        return {n.metadata.name: n for n in k.list_nodes(kat_pb2.ListRequest()).items}


def leader_name(c: DevCluster) -> str:
    return next((n for n, v in nodes(c).items() if v.status.leader), "")


def name_of(c: DevCluster, key: str) -> str:
    return str(c.node(key)["name"])


def podman_args(c: DevCluster, key: str) -> list[str]:
    node = c.node(key)
    pod = Path(node["data_dir"]) / "podman"
    return [
        "podman",
        "--root",
        str(pod / "root"),
        "--runroot",
        str(RUNROOT_BASE / node["netns"]),
    ]


def podman_running(c: DevCluster, key: str, name: str) -> list[str]:
    """Ids of the workload's running containers on node `key`, as Podman sees them."""
    p = subprocess.run(
        [
            *podman_args(c, key),
            "ps",
            "--filter",
            f"label={LABEL_WORKLOAD}={name}",
            "--filter",
            "status=running",
            "--format",
            "{{.ID}}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if p.returncode != 0:
        raise OSError(f"podman ps on {key}: {p.stderr.strip()}")
    return p.stdout.split()


def podman_copies(c: DevCluster, name: str) -> dict[str, int]:
    return {n["key"]: len(podman_running(c, n["key"], name)) for n in c.state()["nodes"]}


def converged(c: DevCluster, name: str, replicas: int) -> bool:
    """Exactly `replicas` copies running (Podman's count) and all of them ready (KAT)."""
    return sum(podman_copies(c, name).values()) == replicas and ready_on(c, name) == replicas


def serving_leaders(c: DevCluster) -> list[str]:
    """API endpoints that answer as the leader (asked one by one, redirects not followed)."""
    assert c.katconfig is not None
    ctx = clientconfig.load(c.katconfig).context()
    creds = rpc.client_credentials(ctx.ca, ctx.cert, ctx.key)
    found = []
    for n in c.state()["nodes"]:
        if not n.get("etcd_member"):
            continue
        endpoint = f"{n['address']}:9115"
        with grpc.secure_channel(endpoint, creds, options=rpc.api_channel_options()) as ch:
            try:
                kat_pb2_grpc.ClusterAPIStub(ch).GetClusterInfo(
                    kat_pb2.ClusterInfoRequest(), timeout=3
                )
                found.append(n["key"])
            except grpc.RpcError:
                pass
    return found


# ------------------------------------------------------------------ making faults


@contextmanager
def recording(result: Result) -> Iterator[Result]:
    """Run a fault's steps; an unexpected error is a failed check, and what was measured
    before it is kept."""
    try:
        yield result
    except Exception as exc:  # noqa: BLE001 - reported in the result
        result.checks["ran to the end"] = False
        result.notes.append(repr(exc))


def link(c: DevCluster, key: str, up: bool) -> None:
    """The host side of the node's veth, down (a silent partition) or up."""
    veth = c.node(key)["veth"]
    subprocess.run(["ip", "link", "set", veth, "up" if up else "down"], check=True, timeout=10)


@contextmanager
def partitioned(c: DevCluster, key: str) -> Iterator[None]:
    link(c, key, up=False)
    try:
        yield
    finally:
        link(c, key, up=True)


def apply(c: DevCluster, bundle: Bundle, *extra: str, timeout: float = 120) -> tuple[int, str]:
    p = c.katcall("apply", "-f", str(bundle.dir), *extra, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr).strip()


def prepare(c: DevCluster, bundle: Bundle) -> None:
    """Apply the workload and wait until every copy runs."""
    # The saved config learns every member (a just-started cluster may still be settling).
    if wait_for(lambda: c.katcall("get", "nodes").returncode == 0, 30) is None:
        p = c.katcall("get", "nodes")
        raise RuntimeError(f"katcall get nodes failed: {p.stderr.strip()}")
    rc, out = apply(c, bundle, "--wait", "--timeout", "3m", timeout=200)
    if rc != 0:
        raise RuntimeError(f"apply --wait failed: {out}")
    if wait_for(lambda: converged(c, bundle.name, bundle.replicas), 60) is None:
        raise RuntimeError(f"{bundle.name} did not converge: {podman_copies(c, bundle.name)}")


def follower_with_copy(
    c: DevCluster, name: str, avoid: str = "", *, or_leader: bool = False
) -> str:
    """The key of a non-leader node running a copy of the workload (with `or_leader`,
    the leader's when no follower runs one: after a heal all copies may be there)."""
    lead = leader_name(c)
    on = {i.node for i in instances(c, name) if i.ready}
    for n in c.state()["nodes"]:
        if n["name"] != lead and n["name"] in on and n["key"] != avoid:
            return str(n["key"])
    if or_leader and lead in on:
        return str(next(n["key"] for n in c.state()["nodes"] if n["name"] == lead))
    raise RuntimeError(f"no follower runs a copy of {name}")


def _reschedulable(c: DevCluster, bundle: Bundle, key: str, result: Result) -> None:
    """Scale up to twice the replicas: the healed node gets new instances that run."""
    node = name_of(c, key)
    base = bundle.replicas
    before = {i.id for i in instances(c, bundle.name) if i.node == node}
    apply(c, bundle.write(replicas=base * 2))
    t = wait_for(
        lambda: any(
            i.node == node and i.id not in before and i.ready for i in instances(c, bundle.name)
        ),
        60,
    )
    result.checks["new instance runs on the healed node"] = t is not None
    if t is not None:
        result.timings["new instance on healed node ready"] = t
    apply(c, bundle.write(replicas=base))
    back = wait_for(lambda: converged(c, bundle.name, base), 90)
    result.checks["back to the desired copies after scaling"] = back is not None


def _partition(c: DevCluster, bundle: Bundle, key: str, fault: str, loss_timeout: float) -> Result:
    result = Result(fault)
    with recording(result):
        name, replicas = bundle.name, bundle.replicas
        node = name_of(c, key)
        mine = len(podman_running(c, key, name))
        was_leader = leader_name(c) == node
        with partitioned(c, key):
            t0 = time.monotonic()
            if was_leader:
                t = wait_for(lambda: leader_name(c) not in ("", node), 60)
                result.checks["a new leader is elected"] = t is not None
                if t is not None:
                    result.timings["new leader elected"] = t
            t = wait_for(lambda: ready_on(c, name, exclude=node) >= replicas, 90)
            took = None if t is None else time.monotonic() - t0
            result.checks["replaced elsewhere in time"] = (
                took is not None and took <= loss_timeout + 15
            )
            if took is not None:
                result.timings["instances replaced elsewhere"] = took
            running = podman_running(c, key, name)
            kept = len(running)
            result.checks["partitioned node kept its containers"] = kept >= mine
            result.notes.append(f"{node}: {mine} copies before, {kept} while partitioned")
            if running:
                # Cut off from the leader, the node still restarts what fails (detached).
                subprocess.run(
                    [*podman_args(c, key), "rm", "-f", running[0]],
                    capture_output=True,
                    timeout=60,
                )
                back = wait_for(
                    lambda: len(set(podman_running(c, key, name)) - {running[0]}) >= kept,
                    60,
                )
                result.checks["a container removed while cut off is back within 15 s"] = (
                    back is not None and back <= 15
                )
                if back is not None:
                    result.timings["removed while cut off, back"] = back
        t = wait_for(lambda: converged(c, name, replicas), 60)
        result.checks["exactly the desired copies within 30 s"] = t is not None and t <= 30
        if t is not None:
            result.timings["exactly the desired copies"] = t
        if was_leader:
            t = wait_for(lambda: len(serving_leaders(c)) == 1, 60)
            result.checks["exactly one leader within 30 s"] = t is not None and t <= 30
            if t is not None:
                result.timings["exactly one leader"] = t
        result.notes.append(f"copies per node after healing: {podman_copies(c, name)}")
        _reschedulable(c, bundle, key, result)
    return result


def fault_partition_follower(c: DevCluster, bundle: Bundle, loss_timeout: float = 5) -> Result:
    key = follower_with_copy(c, bundle.name)
    return _partition(c, bundle, key, f"partition a follower ({key})", loss_timeout)


def fault_partition_leader(c: DevCluster, bundle: Bundle, loss_timeout: float = 5) -> Result:
    lead = leader_name(c)
    key = next(n["key"] for n in c.state()["nodes"] if n["name"] == lead)
    return _partition(c, bundle, key, f"partition the leader ({key})", loss_timeout)


def fault_remove_container(c: DevCluster, bundle: Bundle) -> Result:
    key = follower_with_copy(c, bundle.name, or_leader=True)
    result = Result(f"remove a container with podman rm -f ({key})")
    with recording(result):
        cid = podman_running(c, key, bundle.name)[0]
        t0 = time.monotonic()
        subprocess.run(
            [*podman_args(c, key), "rm", "-f", "-t", "0", cid],
            capture_output=True,
            check=True,
            timeout=60,
        )
        t = wait_for(lambda: converged(c, bundle.name, bundle.replicas), 60)
        took = None if t is None else time.monotonic() - t0
        result.checks["back (RUNNING, ready) within 15 s"] = took is not None and took <= 15
        if took is not None:
            result.timings["container back, ready"] = took
        else:
            result.notes.append(f"copies per node: {podman_copies(c, bundle.name)}")
            # leave the cluster usable for the next fault: a new generation replaces it
            apply(c, bundle.write(greeting=f"after-rm-{int(time.time())}"), "--wait", timeout=120)
    return result


def _podman_service_pids(c: DevCluster, key: str) -> list[int]:
    root = str(Path(c.node(key)["data_dir"]) / "podman" / "root")
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "system" in argv and "service" in argv and root in argv:
            pids.append(int(entry))
    return pids


def fault_kill_podman(c: DevCluster, bundle: Bundle) -> Result:
    key = follower_with_copy(c, bundle.name, or_leader=True)
    result = Result(f"kill a node's Podman service ({key})")
    with recording(result):
        pids = _podman_service_pids(c, key)
        if not pids:
            result.checks["found the node's Podman service"] = False
            return result
        t0 = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        t = wait_for(lambda: set(_podman_service_pids(c, key)) - set(pids), 60)
        result.checks["Podman service restarted"] = t is not None
        if t is not None:
            result.timings["Podman service back"] = t
        t = wait_for(lambda: converged(c, bundle.name, bundle.replicas), 60)
        took = None if t is None else time.monotonic() - t0
        result.checks["workload intact (desired copies ready)"] = took is not None
        if took is not None:
            result.timings["desired copies ready"] = took
        # KAT can still act on that node: a new generation rolls out there too
        rc, out = apply(c, bundle.write(greeting=f"after-podman-{int(time.time())}"), "--wait")
        result.checks["a rollout still completes"] = rc == 0
        if rc != 0:
            result.notes.append(out[-300:])
    return result


def _monitors(ids: list[str]) -> list[str]:
    """Those of the container ids whose conmon still runs (the container's processes)."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if argv and argv[0].endswith("conmon") and "-c" in argv:
                cid = argv[argv.index("-c") + 1] if argv.index("-c") + 1 < len(argv) else ""
                alive += [i for i in ids if cid.startswith(i)]
    return alive


def fault_podman_forgets(c: DevCluster, bundle: Bundle) -> Result:
    """Podman loses its view of running containers (its tmp dir, where it notes that it
    has run since boot, wiped; its service killed): the next Podman "refreshes" every
    container to stopped while their processes run on. KAT must end those processes and
    run the desired copies again, once each, and remove the network namespaces the old
    copies ran in (Podman would have, had it known they still ran)."""
    key = follower_with_copy(c, bundle.name, or_leader=True)
    result = Result(f"Podman forgets its running containers ({key})")
    with recording(result):
        before = podman_running(c, key, bundle.name)
        sandboxes = _sandboxes(c, key, before)
        tmp = Path(c.node(key)["data_dir"]) / "podman" / "tmp"
        t0 = time.monotonic()
        for entry in tmp.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        for pid in _podman_service_pids(c, key):
            os.kill(pid, signal.SIGKILL)
        t = wait_for(
            lambda: not _monitors(before) and converged(c, bundle.name, bundle.replicas), 60
        )
        result.checks["old processes ended, desired copies ready"] = t is not None
        if t is None:
            result.notes.append(f"still running: {_monitors(before)}")
            result.notes.append(f"copies: {podman_copies(c, bundle.name)}")
        else:
            result.timings["desired copies ready, old ones gone"] = time.monotonic() - t0
        left = wait_for(lambda: not [p for p in sandboxes if p.exists()], 20)
        result.checks["old copies' network namespaces removed"] = left is not None
        if left is None:
            result.notes.append(f"left: {[str(p) for p in sandboxes if p.exists()]}")
    return result


def _sandboxes(c: DevCluster, key: str, ids: list[str]) -> list[Path]:
    """The network namespace files (Podman's SandboxKey) of containers `ids` on `key`."""
    if not ids:
        return []
    p = subprocess.run(
        [*podman_args(c, key), "inspect", "--format", "{{.NetworkSettings.SandboxKey}}", *ids],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if p.returncode != 0:
        raise OSError(f"podman inspect on {key}: {p.stderr.strip()}")
    return [Path(line) for line in p.stdout.split() if line.startswith("/")]


def fault_kill_leader_during_applies(
    c: DevCluster, bundle: Bundle, count: int = 40, kill_after: int = 10
) -> Result:
    result = Result(f"kill the leader during {count} applies")
    with recording(result):
        lead = leader_name(c)
        key = next(n["key"] for n in c.state()["nodes"] if n["name"] == lead)
        start_gen = workload(c, bundle.name).metadata.generation
        durations: list[float] = []
        failed: list[str] = []
        # A user's `get workloads -w` open through the failover keeps showing changes.
        watch_out = c.dir / "watch-through-failover.txt"
        watch = subprocess.Popen(
            [*c.state()["katcall_cmd"], "get", "workloads", "-w"],
            stdout=watch_out.open("w"),
            stderr=subprocess.STDOUT,
            env={**c.env, "KATCONFIG": str(c.katconfig)},
        )
        try:
            for n in range(count):
                if n == kill_after:
                    c.kill(key)
                    result.notes.append(f"killed the leader {lead} ({key}) after apply {n}")
                t0 = time.monotonic()
                rc, out = apply(c, bundle.write(greeting=f"apply-{n}"), timeout=90)
                durations.append(time.monotonic() - t0)
                if rc != 0:
                    failed.append(f"apply {n}: {out[-200:]}")
        finally:
            c.start(key)
        w = workload(c, bundle.name)
        final = str(w.metadata.generation)
        shown = wait_for(lambda: _watch_shows(watch_out, bundle.name, final), 30)
        watch.kill()
        watch.wait()
        result.checks["an open `get -w` follows the new leader"] = shown is not None
        if shown is None:
            result.notes.append("get -w: " + watch_out.read_text()[-300:])
        env = {e.name: e.value for e in w.spec.container.env}
        result.checks[f"all {count} applies succeeded"] = not failed
        result.checks["none lost (generation and spec)"] = (
            w.metadata.generation == start_gen + count
            and env.get("GREETING") == f"apply-{count - 1}"
        )
        result.timings["longest apply (the failover)"] = max(durations)
        result.timings["median apply"] = sorted(durations)[len(durations) // 2]
        result.notes += failed[:3]
        back = wait_for(lambda: len(c.ready_nodes()) == len(c.state()["nodes"]), 90)
        result.checks["killed node back and READY"] = back is not None
        t = wait_for(lambda: converged(c, bundle.name, bundle.replicas), 120)
        result.checks["desired copies after the failover"] = t is not None
    return result


def _watch_shows(path: Path, name: str, generation: str) -> bool:
    """Whether a `get workloads -w` output has a row of `name` at `generation`."""
    for line in path.read_text().splitlines():
        cells = line.split()
        if cells and cells[0] == name and generation in cells:
            return True
    return False


FAULTS: dict[str, Callable[[DevCluster, Bundle], Result]] = {
    "partition-follower": fault_partition_follower,
    "partition-leader": fault_partition_leader,
    "kill-leader-applies": fault_kill_leader_during_applies,
    "kill-podman": fault_kill_podman,
    "remove-container": fault_remove_container,
    "podman-forgets": fault_podman_forgets,
}


def summary(results: list[Result]) -> str:
    return "\n".join(line for r in results for line in r.lines())


def to_json(results: list[Result]) -> str:
    return json.dumps(
        [{"fault": r.fault, "ok": r.ok, "timings": r.timings, "checks": r.checks} for r in results],
        indent=2,
    )
