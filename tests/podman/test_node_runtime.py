"""The node side of workloads (kat_agent/node/) against REAL Podman.

Each test runs a node runtime (`serve_node`: reconciler, assignments stream, NodeAgent
API) and a real `Agent` (heartbeats) against a small in-process fake leader: a real
grpc.aio server implementing AgentAPI.WatchAssignments and Heartbeats over real mTLS with
certificates from internal/security/pki.py. The test publishes assignment snapshots on the fake
leader and reads what the node reports in its heartbeats.

The node's root Podman service gets a private storage under a temp dir (shared by the
module: busybox is imported once) and runs in a private network namespace, where the
node's `kat` bridge network lives. Every container, service, network namespace and
workload user made here is removed again, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.core.node_plan import LABEL_RESTARTS
from internal.core.observe import observe_instance
from internal.host.datadir import DataDir, NodeIdentity
from internal.security import pki, rpc
from kat_agent.node.agent import Agent
from kat_agent.node.assignments import SNAPSHOT_FILE
from kat_agent.node.idle_users import idle_seconds_from_env
from kat_agent.node.instances import InstanceState, NodeRuntime
from kat_agent.node.main import serve_node
from kat_agent.node.podman.observe import ObservedContainer
from kat_agent.node.podman.orphans import container_monitors
from kat_agent.node.podman.service import PodmanStorage
from kat_agent.node.podman.services import NodeSettings, rootless_from_env
from kat_agent.node.podman.spec import (
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_WORKLOAD,
    InstanceSpec,
)
from kat_agent.node.podman.users import remove_workload_user, workload_username
from tests.helpers import (
    BUSYBOX_IMAGE,
    BUSYBOX_TARBALL,
    TEST_CONTAINERS_CONF,
    free_port,
    podman_unavailable,
)

T = TypeVar("T")
P = kat_pb2.Instance

IMAGE = BUSYBOX_IMAGE
TARBALL = BUSYBOX_TARBALL
NODE = "node-a"
LEADER = "leader"
NS = "kt"
SUBNET = "10.100.4.0/23"
GRACE = 2.0
CONTAINERS_CONF = TEST_CONTAINERS_CONF


def _unavailable() -> str | None:
    return podman_unavailable("ip", "nsenter")


needs_podman = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


async def poll(fn: Callable[[], Any], *, within: float = 15.0, what: str = "condition") -> Any:
    """Call (and await) fn until it returns something truthy; fail after `within` s."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not reached within {within:g}s (last: {last!r})")


# ---------------------------------------------------------------- the module's Podman


@dataclass
class PodmanEnv:
    base: Path
    storage: PodmanStorage
    conf: Path
    netns: str
    volumes: Path
    counter: int = 0

    @property
    def netns_path(self) -> Path:
        return Path("/var/run/netns") / self.netns

    def podman(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", f"--net={self.netns_path}", "podman", *self.storage.global_args()]
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        return subprocess.run(
            [*cmd, *args], capture_output=True, text=True, check=check, env=env, timeout=120
        )

    def remove_all_containers(self) -> None:
        ids = self.podman("ps", "-aq").stdout.split()
        if ids:
            self.podman("rm", "-f", "-t", "0", *ids)

    def container_ids(self) -> set[str]:
        return set(self.podman("ps", "-aq", "--no-trunc").stdout.split())


def _our_processes(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                pids.append(int(entry))
    return pids


def _unmount_under(base: Path) -> None:
    prefix = f"{base}/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@pytest.fixture(scope="module")
def env() -> Iterator[PodmanEnv]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="kat-nt-"))  # short: socket and runroot limits
    base.chmod(0o755)
    netns = f"katnt{secrets.token_hex(3)}"
    storage = PodmanStorage(
        root=base / "podman" / "root",
        runroot=base / "podman" / "runroot",
        tmpdir=base / "podman" / "tmp",
        network_config_dir=base / "podman" / "networks",
    )
    conf = base / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    e = PodmanEnv(base, storage, conf, netns, base / "volumes")
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        for _, path in storage.items():
            path.mkdir(parents=True, exist_ok=True)
        e.podman(
            "import",
            "-q",
            "--change",
            'CMD ["/bin/sh"]',
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            str(TARBALL),
            IMAGE,
            check=True,
        )
        yield e
    finally:
        e.remove_all_containers()
        for pid in _our_processes(str(base)):  # a service a failed test left behind
            with _suppress():
                os.kill(pid, 9)
        _unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


# ---------------------------------------------------------------- certificates


@dataclass
class Certs:
    ca: pki.CertAndKey
    leader: pki.CertAndKey  # the leader's node certificate (CN "leader")
    node: pki.CertAndKey  # this node's (CN node-a)
    other: pki.CertAndKey  # another node's (CN node-b)
    admin: pki.CertAndKey
    api: pki.CertAndKey  # the leader's API server certificate (role kat:api)

    @classmethod
    def make(cls) -> Certs:
        ca = pki.create_ca("kat-node-test-ca")

        def serving(name: str) -> pki.CertAndKey:
            return pki.issue_serving_certificate(
                ca.cert_pem, ca.key_pem, node_name=name, advertise_ip="127.0.0.1"
            )

        admin = pki.issue_certificate(
            ca.cert_pem, ca.key_pem, common_name="admin", role=pki.ROLE_ADMIN
        )
        dns, ips = pki.serving_sans(LEADER, "127.0.0.1", extra_dns=[rpc.API_SERVER_NAME])
        api = pki.issue_certificate(
            ca.cert_pem,
            ca.key_pem,
            common_name=LEADER,
            role=rpc.ROLE_API,
            dns_names=dns,
            ip_addresses=ips,
        )
        return cls(ca, serving(LEADER), serving(NODE), serving("node-b"), admin, api)


@pytest.fixture(scope="module")
def certs() -> Certs:
    return Certs.make()


# ---------------------------------------------------------------- the fake leader


class FakeLeader(kat_pb2_grpc.AgentAPIServicer):
    """AgentAPI as a leader serves it to one node: assignment snapshots the test
    publishes, heartbeats recorded."""

    def __init__(self, certs: Certs) -> None:
        self.certs = certs
        self.port = free_port()
        self.snapshot = kat_pb2.AssignmentSet()
        self.revision = 0
        self.cond = asyncio.Condition()
        self.beats: dict[str, kat_pb2.HeartbeatRequest] = {}
        self.server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        kat_pb2_grpc.add_AgentAPIServicer_to_server(self, server)
        # the API is served with an API certificate: agents check its name
        creds = rpc.mtls_server_credentials(
            self.certs.api.cert_pem, self.certs.api.key_pem, self.certs.ca.cert_pem
        )
        assert server.add_secure_port(self.address, creds)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    async def publish(self, *assignments: kat_pb2.Assignment) -> None:
        async with self.cond:
            self.revision += 1
            self.snapshot = kat_pb2.AssignmentSet(
                assignments=list(assignments), revision=self.revision
            )
            self.cond.notify_all()

    async def WatchAssignments(
        self, request: kat_pb2.AssignmentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kat_pb2.AssignmentSet]:
        cn = await rpc.require_role(context, rpc.ROLE_NODE)
        assert cn == request.node_name
        sent = 0  # nothing until the test publishes
        while True:
            async with self.cond:
                await self.cond.wait_for(lambda s=sent: self.revision > s)
                sent, snapshot = self.revision, self.snapshot
            yield snapshot

    async def Heartbeats(
        self,
        request_iterator: AsyncIterator[kat_pb2.HeartbeatRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[kat_pb2.HeartbeatResponse]:
        await rpc.require_role(context, rpc.ROLE_NODE)
        async for req in request_iterator:
            self.beats[req.node_name] = req
            yield kat_pb2.HeartbeatResponse(
                tick_seconds=1, leader_node=LEADER, api_endpoints=[self.address]
            )

    def reported(self) -> dict[str, kat_pb2.Instance]:
        beat = self.beats.get(NODE)
        return {i.id: i for i in beat.instances} if beat else {}

    async def wait_for(
        self,
        iid: str,
        check: Callable[[kat_pb2.Instance], bool],
        within: float = 15.0,
        what: str = "",
    ) -> kat_pb2.Instance:
        def found() -> kat_pb2.Instance | None:
            inst = self.reported().get(iid)
            return inst if inst is not None and check(inst) else None

        return await poll(found, within=within, what=what or f"report of {iid}")

    async def wait_gone(self, iid: str, within: float = 15.0) -> None:
        await poll(lambda: iid not in self.reported(), within=within, what=f"{iid} unreported")


# ---------------------------------------------------------------- a node


@dataclass
class NodeHarness:
    env: PodmanEnv
    certs: Certs
    root: Path  # the node's data dir
    leader_address: str
    rootless: bool = False
    home_base: Path | None = None
    run_dir: Path = field(default_factory=Path)
    address: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    agent: Agent | None = None
    runtime: NodeRuntime | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dd = DataDir(self.root)
        if not self.dd.ca_cert.exists():
            self.dd.create()
            self.dd.ca_cert.write_bytes(self.certs.ca.cert_pem)
            pki.write_pair(self.dd.node_cert, self.dd.node_key, self.certs.node)
        self.env.counter += 1
        self.run_dir = self.env.base / f"run{self.env.counter}"
        self.identity = NodeIdentity(
            name=NODE,
            uid="uid-a",
            cluster_uid="cluster",
            advertise_address="127.0.0.1",
            api_endpoints=[self.leader_address],
            subnet=SUBNET,
        )

    def settings(self) -> NodeSettings:
        kw: dict[str, Any] = {}
        if self.home_base is not None:
            kw["home_base"] = self.home_base
        return NodeSettings(
            node_name=NODE,
            state_dir=self.dd.root / "agent",
            run_dir=self.run_dir,
            subnet=SUBNET,
            storage=self.env.storage,
            rootless=self.rootless,
            volume_base_path=self.env.volumes,
            containers_conf=self.env.conf,
            netns=self.env.netns_path,
            grace_seconds=GRACE,
            resync_seconds=0.5,
            idle_service_seconds=0.5,
            image_store_base=self.env.base / "images",  # removed with the env
            **kw,
        )

    async def start(self) -> None:
        agent = Agent(self.dd, self.identity, tick_seconds=1)
        runtime = NodeRuntime(self.settings(), agent.beat_now)
        self.agent, self.runtime = agent, runtime
        self.tasks = [
            asyncio.create_task(agent.run()),
            asyncio.create_task(
                serve_node(runtime.settings, self.dd, agent, self.address, runtime)
            ),
        ]
        await poll(runtime.ready.is_set, within=60, what="node runtime ready")

    async def stop(self) -> None:
        # Cancel until done: Agent.run's asyncio.wait_for (Python 3.11) can swallow a
        # cancellation that meets a heartbeat wake-up.
        while not all(t.done() for t in self.tasks):
            for t in self.tasks:
                t.cancel()
            await asyncio.wait(self.tasks, timeout=1)
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    @property
    def rt(self) -> NodeRuntime:
        assert self.runtime is not None
        return self.runtime

    async def observe(self, cid: str) -> ObservedContainer:
        return await self.rt.pool.root.runtime.observe(cid)

    async def inspect(self, cid: str) -> dict[str, Any]:
        return await self.rt.pool.root.runtime.inspect(cid)

    async def resyncs(self, n: int = 2) -> None:
        """Let the node compare with Podman `n` more times (to see nothing changes)."""
        for _ in range(n):
            before = self.rt.resync_count
            await poll(lambda b=before: self.rt.resync_count > b, within=10, what="a resync")


@pytest.fixture
def cluster(env: PodmanEnv, certs: Certs, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`async with cluster() as (leader, node)`: a fake leader and a started node.
    Containers left by the test are removed afterwards."""
    made_users: list[tuple[str, str]] = []

    @asynccontextmanager
    async def make(
        *, start_leader: bool = True, node_root: Path | None = None, **kw: Any
    ) -> AsyncIterator[tuple[FakeLeader, NodeHarness]]:
        leader = FakeLeader(certs)
        if start_leader:
            await leader.start()
        node = NodeHarness(env, certs, node_root or tmp_path / "node", leader.address, **kw)
        try:
            yield leader, node
        finally:
            await node.stop()
            await leader.stop()

    make.users = made_users  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        env.remove_all_containers()
        for ns, name in made_users:
            remove_workload_user(ns, name)


# ---------------------------------------------------------------- assignments


def assignment(
    iid: str,
    name: str,
    args: list[str],
    *,
    ns: str = NS,
    generation: int = 1,
    restart_count: int = 0,
    phase: int = P.SCHEDULED,
    kind: int = kat_pb2.WorkloadSpec.SERVICE,
    env: dict[str, str] | None = None,
    cpu: str = "",
    memory: str = "",
    health: kat_pb2.HealthCheck | None = None,
    volumes: tuple[kat_pb2.Volume, ...] = (),
    mounts: tuple[kat_pb2.VolumeMount, ...] = (),
    image: str = IMAGE,
    purge_volumes: bool = False,
) -> kat_pb2.Assignment:
    container = kat_pb2.Container(
        args=args,
        env=[kat_pb2.EnvVar(name=k, value=v) for k, v in (env or {}).items()],
        volume_mounts=list(mounts),
        resources=kat_pb2.ResourceRequirements(limits=kat_pb2.ResourceList(cpu=cpu, memory=memory)),
    )
    workload = kat_pb2.Workload(
        api_version="kat.dws.rip/v1alpha1",
        kind="Workload",
        metadata=kat_pb2.ObjectMeta(name=name, namespace=ns, generation=generation),
        spec=kat_pb2.WorkloadSpec(
            type=kind,
            source=kat_pb2.WorkloadSource(image=image),
            container=container,
            volumes=list(volumes),
        ),
    )
    bundle = kat_pb2.Bundle(workload=workload)
    if health is not None:
        bundle.virtual_load_balancer.spec.health_check.CopyFrom(health)
    inst = kat_pb2.Instance(
        id=iid,
        workload=name,
        namespace=ns,
        node=NODE,
        generation=generation,
        phase=phase,
        restart_count=restart_count,
        purge_volumes=purge_volumes,
    )
    return kat_pb2.Assignment(instance=inst, bundle=bundle)


def running(i: kat_pb2.Instance) -> bool:
    return i.phase == P.RUNNING and bool(i.container_id)


# ---------------------------------------------------------------- no Podman needed


def test_rootless_from_env() -> None:
    assert rootless_from_env({}) is True
    assert rootless_from_env({"KAT_ROOTLESS": "1"}) is True
    for off in ("0", "false", "No", "off"):
        assert rootless_from_env({"KAT_ROOTLESS": off}) is False


def test_idle_seconds_from_env() -> None:
    assert idle_seconds_from_env({}) == 60.0
    assert idle_seconds_from_env({"KAT_IDLE_SERVICE_SECONDS": "5"}) == 5.0
    assert idle_seconds_from_env({"KAT_IDLE_SERVICE_SECONDS": "0"}) == 1.0
    assert idle_seconds_from_env({"KAT_IDLE_SERVICE_SECONDS": "soon"}) == 60.0


def _observed(state: str, exit_code: int | None = None, **labels: str) -> ObservedContainer:
    return ObservedContainer(
        container_id="c1",
        name="kat_kt_w_i1",
        namespace=NS,
        workload="w",
        instance_id="i1",
        generation=1,
        state=state,
        exit_code=exit_code,
        started_at=None,
        finished_at=None,
        restart_count=0,
        image=IMAGE,
        oom_killed=False,
        labels=labels,
        ip="10.100.4.2",
    )


def test_report_phases() -> None:
    a = assignment("i1", "w", ["true"])
    st = InstanceState("i1", assignment=a)
    inst = st.report(NODE)
    assert inst is not None and inst.phase == P.SCHEDULED and not inst.ready
    st.observed = _observed("running")
    inst = st.report(NODE)
    assert inst is not None
    assert (inst.phase, inst.ready, inst.ip, inst.node) == (P.RUNNING, True, "10.100.4.2", NODE)
    st.observed = _observed("exited", 0)
    inst = st.report(NODE)
    assert inst is not None and inst.phase == P.FAILED  # a SERVICE must not exit
    job = assignment("i1", "w", ["true"], kind=kat_pb2.WorkloadSpec.JOB)
    st.assignment = job
    inst = st.report(NODE)
    assert inst is not None and (inst.phase, inst.message) == (P.SUCCEEDED, "completed")
    st.observed = _observed("exited", 2)
    inst = st.report(NODE)
    assert inst is not None and (inst.phase, inst.exit_code) == (P.FAILED, 2)
    st.health_failed = "c1"
    inst = st.report(NODE)
    assert inst is not None and inst.message == "health check failed"
    # Not assigned any more and no container: not reported at all.
    st.observed, st.assignment, st.health_failed = None, None, ""
    assert st.report(NODE) is None
    # Adopted before any snapshot: the workload type comes from the container's label.
    st.observed = _observed("exited", 0, **{"kat.dws.rip/workload-type": "JOB"})
    inst = st.report(NODE)
    assert inst is not None and inst.phase == P.SUCCEEDED


# ---------------------------------------------------------------- root mode


@needs_podman
async def test_snapshot_to_running_with_labels_env_limits_ip(
    cluster: Callable[..., Any], env: PodmanEnv
) -> None:
    data = kat_pb2.Volume(name="data", simple_cluster_storage=kat_pb2.SimpleClusterStorage())
    a = assignment(
        "web-1",
        "web",
        ["sh", "-c", "echo $GREETING > /data/hello; sleep 3600"],
        generation=3,
        env={"GREETING": "hi there"},
        cpu="500m",
        memory="64Mi",
        volumes=(data,),
        mounts=(kat_pb2.VolumeMount(name="data", mount_path="/data"),),
    )
    async with cluster() as (leader, node):
        await leader.publish(a)
        t0 = time.monotonic()
        await node.start()
        inst = await leader.wait_for("web-1", running, what="web-1 RUNNING")
        print(f"snapshot to RUNNING report (incl. node start): {time.monotonic() - t0:.2f}s")
        assert inst.ready and inst.node == NODE and inst.generation == 3
        assert (inst.namespace, inst.workload, inst.restart_count) == (NS, "web", 0)
        assert inst.HasField("started_at") and not inst.HasField("finished_at")
        ip = ip_address(inst.ip)
        assert ip in ip_network(SUBNET) and ip != ip_network(SUBNET).network_address + 1

        doc = await node.inspect(inst.container_id)
        labels = doc["Config"]["Labels"]
        assert labels[LABEL_WORKLOAD] == "web" and labels[LABEL_NAMESPACE] == NS
        assert labels[LABEL_INSTANCE] == "web-1" and labels[LABEL_GENERATION] == "3"
        assert labels[LABEL_MANAGED] == "true" and labels[LABEL_RESTARTS] == "0"
        assert "GREETING=hi there" in doc["Config"]["Env"]
        assert doc["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert doc["HostConfig"]["CpuQuota"] == 50_000
        assert doc["Name"] == "kat_kt_web_web-1"
        assert doc["NetworkSettings"]["Networks"]["kat"]["IPAddress"] == inst.ip
        hello = env.volumes / NS / "web" / "data" / "hello"
        await poll(hello.exists, what="the container wrote its volume")
        assert hello.read_text() == "hi there\n"
        # The snapshot is kept for a restart without the leader.
        saved = kat_pb2.AssignmentSet()
        saved.ParseFromString((node.dd.root / "agent" / SNAPSHOT_FILE).read_bytes())
        assert [x.instance.id for x in saved.assignments] == ["web-1"]

        # With the node up, a new assignment reaches RUNNING about as fast as `podman run`.
        await leader.publish(a, assignment("web-2", "web", ["sleep", "3600"]))
        t0 = time.monotonic()
        await leader.wait_for("web-2", running, what="web-2 RUNNING")
        took = time.monotonic() - t0
        print(f"publish to RUNNING report: {took:.2f}s")
        assert took < 5


@needs_podman
async def test_adopts_containers_after_restart(cluster: Callable[..., Any]) -> None:
    a = assignment("adopt-1", "adopt", ["sleep", "3600"])
    async with cluster() as (leader, node):
        await leader.publish(a)
        await node.start()
        first = await leader.wait_for("adopt-1", running)
        before = await node.observe(first.container_id)
        await node.stop()
        # A new agent process: same data dir, same Podman storage.
        await node.start()
        again = await leader.wait_for(
            "adopt-1", lambda i: running(i) and i.ready, what="adopted and reported"
        )
        assert again.container_id == first.container_id
        after = await node.observe(again.container_id)
        assert after.running and after.started_at == before.started_at
        assert after.restart_count == 0
        await node.resyncs()
        assert leader.reported()["adopt-1"].container_id == first.container_id


@needs_podman
async def test_removed_from_snapshot_stops_with_grace_then_kill(
    cluster: Callable[..., Any], env: PodmanEnv
) -> None:
    data = kat_pb2.Volume(name="data", simple_cluster_storage=kat_pb2.SimpleClusterStorage())
    trap = "trap 'echo TERM > /data/got; exit 0' TERM; while true; do sleep 0.05; done"
    polite = assignment(
        "polite-1",
        "polite",
        ["sh", "-c", trap],
        volumes=(data,),
        mounts=(kat_pb2.VolumeMount(name="data", mount_path="/data"),),
    )
    stubborn = assignment("stubborn-1", "stubborn", ["sleep", "3600"])  # PID 1 ignores TERM
    async with cluster() as (leader, node):
        await leader.publish(polite, stubborn)
        await node.start()
        p = await leader.wait_for("polite-1", running)
        s = await leader.wait_for("stubborn-1", running)
        await leader.publish()
        t0 = time.monotonic()
        done: dict[str, float] = {}

        def gone() -> bool:
            rep = leader.reported()
            for iid in ("polite-1", "stubborn-1"):
                if iid not in rep:
                    done.setdefault(iid, time.monotonic() - t0)
            return len(done) == 2

        await poll(gone, within=20, what="both instances stopped and unreported")
        assert done["polite-1"] < GRACE, done  # SIGTERM handled: no need to wait
        assert done["stubborn-1"] >= GRACE, done  # SIGKILL only after the grace period
        assert (env.volumes / NS / "polite" / "data" / "got").read_text() == "TERM\n"
        ids = env.container_ids()
        assert p.container_id not in ids and s.container_id not in ids


@needs_podman
async def test_terminating_stops_removes_and_purges_volumes(
    cluster: Callable[..., Any], env: PodmanEnv
) -> None:
    data = kat_pb2.Volume(name="data", simple_cluster_storage=kat_pb2.SimpleClusterStorage())
    kw: dict[str, Any] = {
        "volumes": (data,),
        "mounts": (kat_pb2.VolumeMount(name="data", mount_path="/data"),),
    }
    args = ["sh", "-c", "touch /data/x; exec sleep 3600"]
    keep = assignment("keep-1", "keep", args, **kw)
    purge = assignment("purge-1", "purge", args, **kw)
    async with cluster() as (leader, node):
        await leader.publish(keep, purge)
        await node.start()
        k = await leader.wait_for("keep-1", running)
        await leader.wait_for("purge-1", running)
        await poll((env.volumes / NS / "purge" / "data" / "x").exists, what="volume written")
        await poll((env.volumes / NS / "keep" / "data" / "x").exists, what="volume written")
        # The leader marks both TERMINATING (a delete; one with --purge-volumes).
        keep.instance.phase = P.TERMINATING
        purge.instance.phase = P.TERMINATING
        purge.instance.purge_volumes = True
        await leader.publish(keep, purge)
        await leader.wait_gone("keep-1")
        await leader.wait_gone("purge-1")
        assert k.container_id not in env.container_ids()
        await poll(lambda: not (env.volumes / NS / "purge").exists(), what="volumes purged")
        assert (env.volumes / NS / "keep" / "data" / "x").exists()  # kept without purge
        assert not [c for c in env.container_ids()]


@needs_podman
async def test_exit_reported_restart_only_on_leader_bump(cluster: Callable[..., Any]) -> None:
    crash = assignment("crash-1", "crash", ["sh", "-c", "exit 3"])
    job = assignment("job-1", "job", ["true"], kind=kat_pb2.WorkloadSpec.JOB)
    async with cluster() as (leader, node):
        await leader.publish(crash, job)
        await node.start()
        failed = await leader.wait_for("crash-1", lambda i: i.phase == P.FAILED)
        assert failed.exit_code == 3 and failed.message == "exited with code 3"
        assert failed.HasField("finished_at") and failed.restart_count == 0
        assert not failed.ready
        done = await leader.wait_for("job-1", lambda i: i.phase == P.SUCCEEDED)
        assert done.exit_code == 0
        # Without a bump (restart policy NEVER, or back-off): nothing happens.
        await node.resyncs()
        again = leader.reported()["crash-1"]
        assert (again.phase, again.container_id) == (P.FAILED, failed.container_id)
        assert (await node.observe(failed.container_id)).state == "exited"
        # The leader decides to restart: a fresh container, and the count acted on.
        crash.instance.restart_count = 1
        await leader.publish(crash, job)
        restarted = await leader.wait_for(
            "crash-1", lambda i: i.restart_count == 1 and i.phase == P.FAILED
        )
        assert restarted.container_id != failed.container_id
        ids = await node.rt.pool.root.runtime.list_managed()
        assert failed.container_id not in {c.container_id for c in ids}
        assert leader.reported()["job-1"].container_id == done.container_id


@needs_podman
async def test_new_generation_replaces_and_removal_behind_kats_back(
    cluster: Callable[..., Any], env: PodmanEnv
) -> None:
    a = assignment("gen-1", "gen", ["sleep", "3600"])
    async with cluster() as (leader, node):
        await leader.publish(a)
        await node.start()
        first = await leader.wait_for("gen-1", running)
        # Same instance, new template generation: a new container of that generation.
        a.instance.generation = 2
        a.bundle.workload.metadata.generation = 2
        await leader.publish(a)
        second = await leader.wait_for("gen-1", lambda i: running(i) and i.generation == 2)
        assert second.container_id != first.container_id
        assert first.container_id not in env.container_ids()
        labels = (await node.inspect(second.container_id))["Config"]["Labels"]
        assert labels[LABEL_GENERATION] == "2"
        # Someone removes the container behind KAT's back: FAILED until the leader restarts.
        await asyncio.to_thread(env.podman, "rm", "-f", "-t", "0", second.container_id)
        gone = await leader.wait_for("gen-1", lambda i: i.phase == P.FAILED)
        assert gone.message == "container removed outside KAT"
        a.instance.restart_count = 1
        await leader.publish(a)
        third = await leader.wait_for("gen-1", lambda i: running(i) and i.restart_count == 1)
        assert third.container_id not in (first.container_id, second.container_id)


@needs_podman
async def test_podman_rm_f_comes_back_with_the_leaders_restart_decision(
    cluster: Callable[..., Any], env: PodmanEnv
) -> None:
    """`podman rm -f` of a managed container: the node reports it FAILED at once, dated
    when first seen, so the leader's real restart decision (internal/core/observe.py,
    ALWAYS with back-off) ends its back-off and restarts it; it is RUNNING and ready again.
    The test plays the leader's reconcile loop with that decision."""
    check = kat_pb2.HealthCheck(
        exec=kat_pb2.ExecAction(command=["true"]), period_seconds=1, failure_threshold=3
    )
    a = assignment("rmf-1", "rmf", ["sleep", "3600"], health=check)
    policy = kat_pb2.RestartPolicy(condition=kat_pb2.RestartPolicy.ALWAYS)
    async with cluster() as (leader, node):
        await leader.publish(a)
        await node.start()
        first = await leader.wait_for("rmf-1", lambda i: running(i) and i.ready, within=60)
        record = kat_pb2.Instance()
        record.CopyFrom(first)
        events: list[kat_pb2.Event] = []
        began = time.monotonic()
        await asyncio.to_thread(env.podman, "rm", "-f", "-t", "0", first.container_id)

        async def leader_step() -> kat_pb2.Instance | None:
            nonlocal record
            report = leader.reported().get("rmf-1")
            obs = observe_instance(
                record, report, policy=policy, run_to_completion=False, now=datetime.now(UTC)
            )
            record = obs.record
            events.extend(obs.events)
            if record.restart_count > a.instance.restart_count:
                a.instance.restart_count = record.restart_count
                await leader.publish(a)
            back = report is not None and running(report) and report.ready
            return report if back and report.container_id != first.container_id else None

        # (a generous deadline: the figure printed is the measurement, not an assertion)
        back = await poll(leader_step, within=60, what="rmf-1 RUNNING and ready again")
        took = time.monotonic() - began
        print(f"podman rm -f -> RUNNING and ready again (node + leader decision): {took:.2f}s")
        assert back.restart_count == 1
        reasons = [e.reason for e in events]
        assert reasons[:2] == ["BackOff", "Restarted"], reasons
        assert "container removed outside KAT" in events[0].message
        assert events[0].type == kat_pb2.Event.WARNING


@needs_podman
async def test_podman_that_forgets_its_container_leaves_no_process_or_namespace(
    cluster: Callable[..., Any], env: PodmanEnv
) -> None:
    """Podman's tmp dir wiped and its service killed: the next Podman "refreshes" the
    running container to stopped while its processes run on, in the network namespace
    Podman mounted under /run/netns. When the node runs the instance again, it ends
    those processes and removes that namespace (no mount, no veth left on the node's
    bridge), and the new container runs."""
    a = assignment("forget-1", "forget", ["sleep", "3600"])
    async with cluster() as (leader, node):
        await leader.publish(a)
        await node.start()
        first = await leader.wait_for("forget-1", running)
        sandbox = Path((await node.inspect(first.container_id))["NetworkSettings"]["SandboxKey"])
        assert await asyncio.to_thread(sandbox.exists), sandbox
        monitors = await asyncio.to_thread(container_monitors, first.container_id)
        assert monitors, "conmon of the running container"
        await asyncio.to_thread(_podman_forgets, env)

        # Podman shows the refreshed container as never started (the node makes it
        # again at once) or as exited (FAILED until the leader decides a restart).
        async def again() -> kat_pb2.Instance | None:
            report = leader.reported().get("forget-1")
            if report is not None and report.phase == P.FAILED and not a.instance.restart_count:
                a.instance.restart_count = 1
                await leader.publish(a)
            fresh = report is not None and running(report)
            return report if fresh and report.container_id != first.container_id else None

        back = await poll(again, within=40, what="forget-1 RUNNING in a new container")
        assert back.container_id != first.container_id
        await poll(lambda: not _alive_pids(monitors), what="the old conmon ended")
        await poll(lambda: not sandbox.exists(), what=f"{sandbox} removed")
        # only the new container's veth is left on the node's bridge
        links = await asyncio.to_thread(
            subprocess.run,
            ["ip", "-n", env.netns, "-o", "link", "show", "type", "veth"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert len(links.stdout.splitlines()) == 1, links.stdout


def _podman_forgets(env: PodmanEnv) -> None:
    """Wipe the Podman's tmp dir (where it notes that it has run since boot) and kill its
    service: the next one "refreshes" every container (as tests/chaos.py does)."""
    tmp = env.storage.tmpdir
    assert tmp is not None
    for entry in tmp.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    for pid in _our_processes(str(env.storage.root)):
        with _suppress():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"system" in argv and b"service" in argv:
                os.kill(pid, 9)


def _alive_pids(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


@needs_podman
async def test_missing_image_fails_and_bump_retries(cluster: Callable[..., Any]) -> None:
    a = assignment("noimg-1", "noimg", ["true"], image="localhost/kat-no-such-image:1")
    async with cluster() as (leader, node):
        await leader.publish(a)
        await node.start()
        inst = await leader.wait_for("noimg-1", lambda i: i.phase == P.FAILED)
        assert "localhost/kat-no-such-image:1" in inst.message and not inst.container_id
        a.instance.restart_count = 1
        await leader.publish(a)
        inst = await leader.wait_for(
            "noimg-1", lambda i: i.phase == P.FAILED and i.restart_count == 1
        )
        assert "kat-no-such-image" in inst.message


@needs_podman
async def test_health_checks_ready_and_failure(cluster: Callable[..., Any]) -> None:
    ok_check = kat_pb2.HealthCheck(
        exec=kat_pb2.ExecAction(command=["test", "-e", "/tmp/ok"]),
        initial_delay_seconds=1,
        period_seconds=1,
        timeout_seconds=2,
        success_threshold=2,
        failure_threshold=3,
    )
    bad_check = kat_pb2.HealthCheck(
        exec=kat_pb2.ExecAction(command=["sh", "-c", "exit 1"]),
        period_seconds=1,
        timeout_seconds=2,
        success_threshold=1,
        failure_threshold=2,
    )
    healthy = assignment(
        "healthy-1", "healthy", ["sh", "-c", "touch /tmp/ok; exec sleep 3600"], health=ok_check
    )
    sick = assignment("sick-1", "sick", ["sleep", "3600"], health=bad_check)
    async with cluster() as (leader, node):
        await leader.publish(healthy, sick)
        await node.start()
        first = await leader.wait_for("healthy-1", running)
        assert not first.ready  # not before successThreshold checks passed
        t_running = time.monotonic()
        ready = await leader.wait_for("healthy-1", lambda i: i.ready, what="healthy-1 ready")
        # initialDelaySeconds 1, then 2 successes 1 s apart: about 2 s after the start.
        started = first.started_at.ToDatetime().timestamp()
        assert time.time() - started >= 1.9
        assert time.monotonic() - t_running < 6
        assert ready.phase == P.RUNNING
        failed = await leader.wait_for(
            "sick-1", lambda i: i.phase == P.FAILED, what="sick-1 FAILED"
        )
        assert failed.message == "health check failed" and not failed.ready
        assert (await node.observe(failed.container_id)).state == "exited"
        # healthy-1 stays ready while its checks pass.
        assert leader.reported()["healthy-1"].ready


@needs_podman
async def test_detached_operation_and_saved_snapshot(
    cluster: Callable[..., Any], env: PodmanEnv
) -> None:
    a = assignment("det-1", "det", ["sleep", "3600"])
    async with cluster() as (leader, node):
        await leader.publish(a)
        await node.start()
        inst = await leader.wait_for("det-1", running)
        assert node.agent is not None
        # The leader goes away: the node keeps running what it has.
        await leader.stop()
        await poll(lambda: not node.agent.connected.is_set(), within=20, what="disconnected")
        await node.resyncs()
        assert (await node.observe(inst.container_id)).running
        assert [i.phase for i in node.rt.report()] == [P.RUNNING]

        # The agent restarts while the leader is still away. A container that is not in
        # the saved snapshot (left over from something else) is removed; det-1 is adopted.
        await node.stop()
        stray = InstanceSpec(NS, "stray", "stray-1", 1, IMAGE, args=("sleep", "3600"))
        stray_id = await _run_stray(env, stray)
        await node.start()
        await poll(lambda: stray_id not in env.container_ids(), what="stray removed")
        await poll(lambda: len(node.rt.report()) == 1, what="stray-1 no longer reported")
        (reported,) = node.rt.report()
        assert (reported.id, reported.container_id) == ("det-1", inst.container_id)
        assert reported.phase == P.RUNNING

        # Without any snapshot (none saved, no leader) nothing is stopped.
        await node.stop()
        (node.dd.root / "agent" / SNAPSHOT_FILE).unlink()
        stray_id = await _run_stray(env, stray)
        await node.start()
        await node.resyncs()
        assert {i.id for i in node.rt.report()} == {"det-1", "stray-1"}
        assert stray_id in env.container_ids()

        # The leader is back, with a snapshot: the node reconciles.
        await leader.start()
        await leader.publish(a)
        await poll(lambda: stray_id not in env.container_ids(), what="stray removed")
        back = await leader.wait_for("det-1", running)
        assert back.container_id == inst.container_id
        await leader.wait_gone("stray-1")


async def _run_stray(env: PodmanEnv, spec: InstanceSpec) -> str:
    """A KAT-labelled container made behind the node's back (CLI, no network)."""
    labels = [f"--label={k}={v}" for k, v in spec.labels().items()]
    res = await asyncio.to_thread(
        env.podman,
        "run",
        "-d",
        "--name",
        spec.container_name,
        "--network=none",
        *labels,
        spec.image,
        *spec.args,
        check=True,
    )
    return res.stdout.strip()


@needs_podman
async def test_logs_exec_status_through_node_agent(
    cluster: Callable[..., Any], certs: Certs
) -> None:
    script = "for i in 1 2 3 4 5; do echo line$i; done; exec sleep 3600"
    a = assignment("logs-1", "logs", ["sh", "-c", script])
    async with cluster() as (leader, node):
        await leader.publish(a)
        await node.start()
        await leader.wait_for("logs-1", running)
        assert node.agent is not None
        await poll(lambda: node.agent.leader_node == LEADER, what="leader known")

        def channel(who: pki.CertAndKey) -> grpc.aio.Channel:
            creds = rpc.client_credentials(certs.ca.cert_pem, who.cert_pem, who.key_pem)
            return grpc.aio.secure_channel(node.address, creds)

        async with channel(certs.leader) as ch:
            stub = kat_pb2_grpc.NodeAgentStub(ch)

            async def logs(**kw: Any) -> bytes:
                req = kat_pb2.LogsRequest(namespace=NS, workload="logs", **kw)
                return b"".join([c.data async for c in stub.Logs(req)])

            await poll(
                lambda: _has(logs(instance_id="logs-1"), b"line5\n"), what="all lines logged"
            )
            assert await logs(instance_id="logs-1") == b"line1\nline2\nline3\nline4\nline5\n"
            assert await logs(tail=2) == b"line4\nline5\n"
            # follow: the first lines, then stop reading (the stream is cancelled)
            call = stub.Logs(kat_pb2.LogsRequest(instance_id="logs-1", follow=True, tail=1))
            first = await call.read()
            assert first.data == b"line5\n" and first.instance_id == "logs-1"
            call.cancel()

            def requests() -> AsyncIterator[kat_pb2.ExecRequest]:
                async def gen() -> AsyncIterator[kat_pb2.ExecRequest]:
                    yield kat_pb2.ExecRequest(
                        namespace=NS,
                        instance_id="logs-1",
                        command=["sh", "-c", "cat; echo oops >&2; exit 7"],
                        stdin=b"hello ",
                    )
                    yield kat_pb2.ExecRequest(stdin=b"world\n")

                return gen()

            out, err, code = b"", b"", None
            async for resp in stub.Exec(requests()):
                out += resp.stdout
                err += resp.stderr
                if resp.exited:
                    code = resp.exit_code
            assert (out, err, code) == (b"hello world\n", b"oops\n", 7)

            status = await stub.Status(kat_pb2.Empty())
            assert status.node_name == NODE and [i.id for i in status.instances] == ["logs-1"]

            with pytest.raises(grpc.aio.AioRpcError) as err_info:
                await logs(instance_id="no-such-instance")
            assert err_info.value.code() == grpc.StatusCode.NOT_FOUND

        for who in (certs.other, certs.admin):
            async with channel(who) as ch:
                stub = kat_pb2_grpc.NodeAgentStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as err_info:
                    await stub.Status(kat_pb2.Empty())
                assert err_info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                with pytest.raises(grpc.aio.AioRpcError) as err_info:
                    req = kat_pb2.LogsRequest(instance_id="logs-1")
                    [c async for c in stub.Logs(req)]
                assert err_info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _private_dir(prefix: str) -> Path:
    """A temp dir others may traverse (a workload user needs to reach its home)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


def _proc_status(pid: int) -> str:
    return Path(f"/proc/{pid}/status").read_text()


async def _has(data: Awaitable[bytes], needle: bytes) -> bool:
    return needle in await data


# ---------------------------------------------------------------- rootless mode


@needs_podman
@pytest.mark.async_timeout(450)
async def test_rootless_workload_user(
    cluster: Callable[..., Any], env: PodmanEnv, tmp_path: Path
) -> None:
    ns, name = f"kt{secrets.token_hex(2)}", "rl"
    cluster.users.append((ns, name))  # type: ignore[attr-defined]
    homes = _private_dir("kat-nt-homes-")
    try:
        a = assignment("rl-1", name, ["sleep", "3600"], ns=ns)
        async with cluster(rootless=True, home_base=homes) as (leader, node):
            await leader.publish(a)
            t0 = time.monotonic()
            await node.start()
            inst = await leader.wait_for("rl-1", running, within=60, what="rootless RUNNING")
            print(f"rootless: first instance RUNNING after {time.monotonic() - t0:.2f}s")
            backends = {b.key: b for b in node.rt.pool.backends()}
            user = workload_username(ns, name)
            assert user in backends
            rt = backends[user].runtime
            doc = await rt.inspect(inst.container_id)
            uid = backends[user].user.uid  # type: ignore[union-attr]
            # Its home and subordinate id range, looked at while it runs: once its service
            # is released the user's removal follows at once, so later they may be gone.
            home = homes / user
            ranges = _subuid_starts(user)
            assert len(ranges) == 1 and home.is_dir()
            status = _proc_status(int(doc["State"]["Pid"]))
            assert f"Uid:\t{uid}\t" in status  # runs as the workload user, not root
            # Not in root's storage.
            assert inst.container_id not in env.container_ids()
            # Not vfs; with fuse-overlayfs the image is read from the node's shared
            # store (root-owned, not writable by the user), not copied to the user.
            driver = backends[user].driver
            assert driver is not None and driver.name == "overlay"
            store = node.rt.pool.image_store
            if driver.shared:
                assert store is not None and store.has(IMAGE)
                assert store.path.stat().st_uid == 0 and store.path.stat().st_mode & 0o022 == 0
                assert not _user_image_copies(node.rt.pool.user_storage(backends[user].user))

            # A second instance of the workload: same user, service and image.
            await leader.publish(a, assignment("rl-2", name, ["sleep", "3600"], ns=ns))
            t0 = time.monotonic()
            second = await leader.wait_for("rl-2", running, within=30)
            print(f"rootless: second instance RUNNING after {time.monotonic() - t0:.2f}s")
            assert second.container_id in {c.container_id for c in await rt.list_managed()}
            await leader.publish(a)
            await leader.wait_gone("rl-2")

            # Adopted after a restart: the workload user's storage is found again.
            await node.stop()
            await node.start()
            again = await leader.wait_for("rl-1", running, within=30)
            assert again.container_id == inst.container_id

            # Unassigned: stopped, removed; the user's Podman service is stopped too.
            await leader.publish()
            await leader.wait_gone("rl-1", within=30)
            await poll(
                lambda: user not in {b.key for b in node.rt.pool.backends()},
                what="workload user's service released",
            )

            # ... and the user itself goes: account, home (image copy included) and its
            # subordinate id range, which the next workload user gets again.
            def removed() -> bool:  # (userdel, then the home, then the id ranges)
                owners = _subid_owners("/etc/subuid") | _subid_owners("/etc/subgid")
                return not _user_exists(user) and not home.exists() and user not in owners

            await poll(removed, within=120, what="workload user, home and ids removed")
            (freed,) = ranges
            starts = {line.split(":")[1] for line in _subid_lines("/etc/subuid")}
            assert freed not in starts  # free for the next user (lowest free range first)
    finally:
        remove_workload_user(ns, name)
        shutil.rmtree(homes, ignore_errors=True)


def _subid_lines(table: str) -> list[str]:
    return Path(table).read_text().splitlines()


def _subuid_starts(user: str) -> set[str]:
    lines = _subid_lines("/etc/subuid")
    return {line.split(":")[1] for line in lines if line.startswith(f"{user}:")}


@needs_podman
@pytest.mark.async_timeout(300)
async def test_rootless_podman_that_lost_its_user_namespace_recovers(
    cluster: Callable[..., Any], tmp_path: Path
) -> None:
    """Every process of a workload user killed (its containers, their conmons, Podman's
    pause process, the service): its Podman then refuses to start ("invalid internal
    status, try resetting the pause process") until `podman system migrate`. The node
    does that itself and runs the instance again. (Seen on a quickstart node whose user
    had been shared with a dev cluster that ended all that user's processes.)"""
    ns, name = f"kt{secrets.token_hex(2)}", "lost"
    cluster.users.append((ns, name))  # type: ignore[attr-defined]
    homes = _private_dir("kat-nt-homes-")
    try:
        a = assignment("ln-1", name, ["sleep", "3600"], ns=ns)
        async with cluster(rootless=True, home_base=homes) as (leader, node):
            await leader.publish(a)
            await node.start()
            first = await leader.wait_for("ln-1", running, within=90, what="rootless RUNNING")
            # The leader is "away": the node restarts the failed instance itself.
            node.rt.detached = lambda: True
            uid = pwd.getpwnam(workload_username(ns, name)).pw_uid
            await asyncio.to_thread(subprocess.run, ["pkill", "-KILL", "-U", str(uid)])
            back = await leader.wait_for(
                "ln-1",
                lambda i: running(i) and i.container_id != first.container_id,
                within=120,
                what="RUNNING again in a new container",
            )
            assert back.container_id
    finally:
        remove_workload_user(ns, name)
        shutil.rmtree(homes, ignore_errors=True)


def _user_image_copies(storage: PodmanStorage) -> list[str]:
    """Images in a workload user's own storage (not in an additional image store)."""
    assert storage.root is not None
    index = storage.root / "overlay-images" / "images.json"
    if not index.exists():
        return []
    return [i["id"] for i in json.loads(index.read_text() or "[]")]


def _subid_owners(table: str) -> set[str]:
    return {line.split(":", 1)[0] for line in Path(table).read_text().splitlines()}


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
