"""A real leader (`kat-agent init` on 127.0.0.1 with its own ports and data dir) and
simulated agents for testing the leader's side of workloads.

A simulated agent is a test double for a node: it joins through the real Join RPC (its own
key and certificate), sends heartbeats on the real Heartbeats stream, follows the real
WatchAssignments stream and serves NodeAgent (logs, exec) on its own loopback address with
mTLS. Instead of Podman it runs the in-memory fake runtime (kat_agent/node/podman/fake.py)
and decides with the node's real pure core (internal/core/node_plan.py), so the node
contract (kat_agent/leader/assignments.py) exists once in code: start what is assigned,
stop what is TERMINATING or no longer assigned, restart an exited container only when the
assignment's restart_count is higher than the one it last acted on. How each workload's
containers behave (become ready, exit with a code) is scripted per workload with
`Behavior`. Every change is recorded in a shared `World`, so tests can check invariants
over everything that happened (e.g. never fewer than N ready instances).

All simulated agents run on one background event loop (`SimNet`), so tests themselves are
plain synchronous code that drives the cluster with `katcall` and the gRPC API.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.core import node_plan as np
from internal.core import tokens
from internal.security import clientconfig, pki, rpc
from kat_agent.node.podman.fake import FakeBehavior, FakeRuntime
from kat_agent.node.podman.observe import ObservedContainer
from kat_agent.node.podman.spec import InstanceSpec
from tests.helpers import LoopThread, free_port

P = kat_pb2.Instance


def poll(
    predicate: Callable[[], Any], within: float = 15.0, what: str = "condition", every: float = 0.05
) -> Any:
    """Poll until `predicate()` is truthy (returns it) or fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(every)


# ------------------------------------------------------------------ the leader


class Leader:
    """`kat-agent init` as a subprocess; use as a context manager (always stopped)."""

    def __init__(
        self, root: Path, tick: int = 1, loss: int = 3, spec: dict[str, object] | None = None
    ) -> None:
        self.root = root
        self.extra_spec = dict(spec or {})  # more cluster.kat spec fields
        self.data = root / "leader"
        self.ports = {
            "apiPort": free_port(),
            "joinPort": free_port(),
            "agentPort": free_port(),
            "etcdClientPort": free_port(),
            "etcdPeerPort": free_port(),
            "wireguardPort": free_port(),
        }
        self.tick, self.loss = tick, loss
        self.proc: subprocess.Popen[bytes] | None = None
        self.katconfig = self.data / "admin.katconfig"
        self.node_name = ""
        self._channel: grpc.Channel | None = None

    def __enter__(self) -> Leader:
        self.root.mkdir(parents=True, exist_ok=True)
        fields = {**self.ports, **self.extra_spec}
        spec = "\n".join(f"  {k}: {v}" for k, v in fields.items())
        config = self.root / "cluster.kat"
        config.write_text(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\n"
            f"metadata: {{name: wltest}}\nspec:\n{spec}\n"
            f"  agentTickSeconds: {self.tick}\n  nodeLossTimeoutSeconds: {self.loss}\n"
            f"  volumeBasePath: {self.root / 'volumes'}\n  backupPath: {self.root / 'backups'}\n"
        )
        log = open(self.root / "leader.log", "wb")  # noqa: SIM115 - closed with the process
        # KAT_NODE_NETWORK=off: this leader shares the host namespace (no overlay, firewall, DNS)
        env = dict(os.environ, KAT_ROOTLESS="0", KAT_NODE_NETWORK="off")
        self.proc = subprocess.Popen(
            [
                "kat-agent",
                "init",
                "--config",
                str(config),
                "--data-dir",
                str(self.data),
                "--advertise-address",
                "127.0.0.1",
                "--node-name",
                "leader",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
        )
        log.close()
        try:
            poll(
                lambda: self.katconfig.exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                within=60,
                what="kat-agent init",
            )
            if self.proc.poll() is not None:
                raise AssertionError(f"kat-agent init exited:\n{self.log_tail()}")
            self.node_name = poll(self._own_node, within=30, what="the leader's API")
            self.katcall("cordon", self.node_name, check=True)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        text = (self.root / "leader.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    @property
    def context(self) -> clientconfig.Context:
        return clientconfig.load(self.katconfig).context()

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.ports['apiPort']}"

    def stub(self) -> kat_pb2_grpc.ClusterAPIStub:
        if self._channel is None:
            ctx = self.context
            self._channel = grpc.secure_channel(
                self.api,
                rpc.client_credentials(ctx.ca, ctx.cert, ctx.key),
                options=rpc.api_channel_options(),
            )
        return kat_pb2_grpc.ClusterAPIStub(self._channel)

    def _own_node(self) -> str:
        try:
            nodes = self.stub().ListNodes(kat_pb2.ListRequest(), timeout=5).items
        except grpc.RpcError:
            return ""
        return nodes[0].metadata.name if nodes else ""

    def katcall(
        self, *args: str, check: bool = False, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            ["katcall", "--katconfig", str(self.katconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"katcall {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
            )
        return p

    def katcall_json(self, *args: str) -> Any:
        return json.loads(self.katcall(*args, "-o", "json", check=True).stdout)

    def join_token(self, approved: list[str] | None = None) -> str:
        """A token; `approved`: addresses it may advertise besides the join's source."""
        req = kat_pb2.CreateTokenRequest(approved_addresses=approved or [])
        return self.stub().CreateToken(req, timeout=10).join_token

    def join_node(
        self, hostname: str, ip: str, labels: dict[str, str] | None = None
    ) -> tuple[kat_pb2.JoinResponse, bytes]:
        """A node joined through the real Join RPC: the answer and the node's key."""
        # joined from 127.0.0.1, advertising `ip`: the address is approved on the token
        credential = tokens.parse(self.join_token(approved=[ip])).credential
        key = pki.generate_private_key()
        req = kat_pb2.JoinRequest(
            token=credential,
            csr_pem=pki.create_csr(key),
            advertise_address=ip,
            hostname=hostname,
            labels=labels or {},
            capacity=kat_pb2.NodeResources(cpu_millis=4000, memory_bytes=8 << 30),
        )
        # the join port's kat:join certificate, verified against the cluster CA
        opts = [("grpc.ssl_target_name_override", pki.JOIN_SERVER_NAME)]
        join = f"127.0.0.1:{self.ports['joinPort']}"
        with grpc.secure_channel(join, rpc.client_credentials(self.context.ca), options=opts) as ch:
            return kat_pb2_grpc.AgentAPIStub(ch).Join(req, timeout=30), key

    # ---------------------------------------------------------------- reads

    def instances(self, namespace: str = "default", workload: str = "") -> list[kat_pb2.Instance]:
        req = kat_pb2.ListInstancesRequest(namespace=namespace, workload=workload)
        return list(self.stub().ListInstances(req, timeout=10).items)

    def workload(self, name: str, namespace: str = "default") -> kat_pb2.Workload:
        ref = kat_pb2.ObjectRef(namespace=namespace, name=name)
        return self.stub().GetWorkload(ref, timeout=10)

    def events(self, name: str, namespace: str = "default") -> list[kat_pb2.Event]:
        req = kat_pb2.ListEventsRequest(namespace=namespace, object_name=name)
        return list(self.stub().ListEvents(req, timeout=10).items)


# ------------------------------------------------------------------ the simulated world


@dataclass
class Behavior:
    """How the containers of one workload behave once started: ready after `ready_after`
    seconds; exit with `exit_code` after `exit_after` seconds (None: run for ever)."""

    ready_after: float = 0.0
    exit_after: float | None = None
    exit_code: int = 0
    unready_after: float | None = None  # ready again never after this many seconds


@dataclass
class Sample:
    at: float
    instances: dict[str, kat_pb2.Instance]  # every container's report, over all agents


class World:
    """What all simulated agents run, and its history (one sample per change)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.behaviors: dict[str, Behavior] = {}
        self.samples: list[Sample] = []
        self.agents: dict[str, SimAgent] = {}
        self.starts: list[tuple[float, str, str, int]] = []  # (time, node, instance, acted)
        self.purged: set[str] = set()  # instances stopped with purge_volumes

    def behavior(self, inst: kat_pb2.Instance) -> Behavior:
        """Scripted per "workload@generation", else per "workload"."""
        found = self.behaviors.get(f"{inst.workload}@{inst.generation}")
        return found or self.behaviors.get(inst.workload, Behavior())

    def record(self) -> None:
        now = time.monotonic()
        snapshot: dict[str, kat_pb2.Instance] = {}
        for agent in self.agents.values():
            for r in agent.reports(now):
                snapshot[r.id] = r
        with self.lock:
            if not self.samples or self.samples[-1].instances != snapshot:
                self.samples.append(Sample(now, snapshot))

    def running(self, workload: str = "") -> list[kat_pb2.Instance]:
        now = time.monotonic()
        out = []
        for agent in list(self.agents.values()):
            out += [
                r
                for r in agent.reports(now)
                if (not workload or r.workload == workload) and r.phase == P.RUNNING
            ]
        return out


class SimAgent:
    """One simulated node (see the module docstring)."""

    def __init__(
        self,
        world: World,
        leader: Leader,
        name: str,
        cert: bytes,
        key: bytes,
        address: str,
        labels: dict[str, str],
    ) -> None:
        self.world, self.leader = world, leader
        self.name, self.cert, self.key, self.address = name, cert, key, address
        self.labels = labels
        self.ca = leader.context.ca
        self.fake = FakeRuntime(behave=self._behave)
        self.memory: dict[str, np.Memory] = {}
        self.desired: dict[str, kat_pb2.Assignment] = {}
        self.snapshot: kat_pb2.AssignmentSet | None = None
        self.snapshots = 0
        self.views: list[tuple[float, kat_pb2.EndpointSet]] = []  # (when, WatchEndpoints view)
        self.connected = False
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self._changed = asyncio.Event()
        self.overlay: kat_pb2.OverlayStatus | None = None  # reported in heartbeats if set
        self.ingress: kat_pb2.IngressStatus | None = None  # likewise

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._changed = asyncio.Event()
        self._channel = grpc.aio.secure_channel(
            self.leader.api,
            rpc.client_credentials(self.ca, self.cert, self.key),
            options=rpc.api_channel_options(),
        )
        self._tasks = [
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._assignments()),
            asyncio.create_task(self._endpoints()),
        ]
        if self._server is None:
            self._server = grpc.aio.server()
            kat_pb2_grpc.add_NodeAgentServicer_to_server(_NodeAgent(self), self._server)
            port = self.leader.ports["agentPort"]
            self._server.add_secure_port(
                f"{self.address}:{port}",
                rpc.mtls_server_credentials(self.cert, self.key, self.ca),
            )
            await self._server.start()

    async def stop(self, *, server: bool = True) -> None:
        """Go silent (a crash from the leader's view): no heartbeats, no stream."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110
                pass
        self._tasks = []
        self.connected = False
        await self._channel.close()
        if server and self._server is not None:
            await self._server.stop(grace=0)
            self._server = None

    # ---------------------------------------------------------------- node behaviour

    @property
    def containers(self) -> dict[str, ObservedContainer]:
        """The fake runtime's containers by instance id."""
        self.fake.settle()
        return {c.observed.instance_id: c.observed for c in list(self.fake.containers.values())}

    def _behave(self, spec: InstanceSpec) -> FakeBehavior:
        b = self.world.behaviors.get(f"{spec.workload}@{spec.generation}")
        b = b or self.world.behaviors.get(spec.workload, Behavior())
        return FakeBehavior(exit_after=b.exit_after, exit_code=b.exit_code)

    def reports(self, now: float) -> list[kat_pb2.Instance]:
        """What the node reports (node_plan.instance_report); readiness as scripted."""
        out = []
        containers = self.containers
        desired = dict(self.desired)
        for iid, mem in list(self.memory.items()):
            obs = containers.get(iid)
            view = np.InstanceView(iid, desired.get(iid), obs, mem)
            inst = np.instance_report(self.name, view)
            if inst is None:
                continue
            if inst.ready and obs is not None and obs.started_at is not None:
                behavior = self.world.behavior(inst)
                up = time.time() - obs.started_at.timestamp()
                inst.ready = up >= behavior.ready_after and (
                    behavior.unready_after is None or up < behavior.unready_after
                )
            if not inst.ip and obs is not None:  # an address, as a bridge network gives one
                n = sum(map(ord, iid))
                inst.ip = f"10.100.{n // 250 % 250}.{n % 250 + 2}"
            out.append(inst)
        return out

    async def _apply(self, snap: kat_pb2.AssignmentSet) -> None:
        """Plan with node_plan and execute on the fake runtime until nothing is left to do."""
        self.desired, _ = np.desired_by_id(snap, self.name)
        for _ in range(10):
            plan = np.node_plan(
                self.desired, self.containers, self.memory, datetime.now(UTC), node=self.name
            )
            self.memory = dict(plan.memory)
            progress = False
            for action in plan.actions:
                progress = await self._execute(action) or progress
            if not progress:
                break
        self._changed.set()

    async def _execute(self, action: np.Action) -> bool:
        """One action on the fake runtime; True if it changed a container."""
        fake = self.fake
        match action:
            case np.Create(instance_id=iid, assignment=a):
                spec = InstanceSpec.from_proto(a.instance, a.bundle.workload.spec)
                spec = replace(spec, extra_labels=np.node_labels(a))
                fake.images.add(spec.image)  # "pulled"
                self.memory[iid] = np.created(self.memory.get(iid, np.Memory()), a)
                await fake.create_and_start(spec)
                self.world.starts.append(
                    (time.monotonic(), self.name, iid, a.instance.restart_count)
                )
                return True
            case np.StopAndRemove(container_id=cid):
                await fake.stop(cid, 0)
                await fake.remove(cid, force=True)
                return True
            case np.PurgeVolumes(instance_id=iid):
                self.world.purged.add(iid)
                self.memory[iid] = replace(self.memory[iid], purged=True)
            case _:
                pass  # Adopt, Watch, Forget, Report: nothing to do on the fake
        return False

    # ---------------------------------------------------------------- streams

    async def _heartbeats(self) -> None:
        stub = kat_pb2_grpc.AgentAPIStub(self._channel)
        while True:
            stream = stub.Heartbeats()
            try:
                last: list[kat_pb2.Instance] = []
                next_beat = 0.0
                while True:
                    now = time.monotonic()
                    reports = self.reports(now)
                    if reports != last or now >= next_beat:
                        req = kat_pb2.HeartbeatRequest(
                            node_name=self.name,
                            capacity=kat_pb2.NodeResources(cpu_millis=4000, memory_bytes=8 << 30),
                            allocatable=kat_pb2.NodeResources(
                                cpu_millis=4000, memory_bytes=8 << 30
                            ),
                            labels=self.labels,
                            advertise_address=self.address,
                            instances=reports,
                        )
                        req.overlay.CopyFrom(self.overlay or kat_pb2.OverlayStatus())
                        if self.ingress is not None:
                            req.ingress.CopyFrom(self.ingress)
                        await stream.write(req)
                        await stream.read()
                        self.connected = True
                        last, next_beat = reports, now + 0.5
                        self.world.record()
                    self._changed.clear()
                    try:
                        await asyncio.wait_for(self._changed.wait(), 0.05)
                    except TimeoutError:
                        pass
            except grpc.RpcError:
                self.connected = False
                await asyncio.sleep(0.2)
            finally:
                stream.cancel()

    async def _assignments(self) -> None:
        stub = kat_pb2_grpc.AgentAPIStub(self._channel)
        while True:
            call = stub.WatchAssignments(kat_pb2.AssignmentsRequest(node_name=self.name))
            try:
                async for snap in call:
                    self.snapshot = snap
                    self.snapshots += 1
                    await self._apply(snap)
                    self.world.record()
            except grpc.RpcError:
                pass
            finally:
                call.cancel()
            await asyncio.sleep(0.2)

    async def _endpoints(self) -> None:
        stub = kat_pb2_grpc.AgentAPIStub(self._channel)
        while True:
            call = stub.WatchEndpoints(kat_pb2.EndpointsRequest(node_name=self.name))
            try:
                async for view in call:
                    self.views.append((time.monotonic(), view))
            except grpc.RpcError:
                pass
            finally:
                call.cancel()
            await asyncio.sleep(0.2)

    def assigned(self) -> dict[str, kat_pb2.Assignment]:
        snap = self.snapshot
        return {} if snap is None else {a.instance.id: a for a in snap.assignments}


class _NodeAgent(kat_pb2_grpc.NodeAgentServicer):
    """Logs and exec of the simulated containers; only a node certificate may call."""

    def __init__(self, agent: SimAgent) -> None:
        self.agent = agent
        self.calls: list[str] = []

    async def Logs(self, request: kat_pb2.LogsRequest, context: grpc.aio.ServicerContext) -> Any:
        await rpc.require_role(context, rpc.ROLE_NODE)
        if request.instance_id not in self.agent.containers:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no container {request.instance_id}")
        # Three stdout lines a minute apart ending now, then (unless tailing) one on stderr;
        # since_seconds and timestamps are honoured as Podman does.
        now = time.time()
        lines = [(now - 60 * (3 - i), f"line {i} of {request.instance_id}\n") for i in (1, 2, 3)]
        if request.tail:
            lines = lines[-request.tail :]
        if request.since_seconds:
            lines = [(t, text) for t, text in lines if t >= now - request.since_seconds]
        for t, line in lines:
            data = self._stamp(request, t, line)
            yield kat_pb2.LogChunk(instance_id=request.instance_id, data=data)
        if not request.tail:
            err = self._stamp(request, now, f"oops from {request.instance_id}\n")
            yield kat_pb2.LogChunk(instance_id=request.instance_id, data=err, stderr=True)

    @staticmethod
    def _stamp(request: kat_pb2.LogsRequest, t: float, line: str) -> bytes:
        if not request.timestamps:
            return line.encode()
        stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        return f"{stamp} {line}".encode()

    async def Exec(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await rpc.require_role(context, rpc.ROLE_NODE)
        first = None
        stdin = b""
        async for req in request_iterator:
            if first is None:
                first = req
                if req.tty:  # a terminal: answer as it goes, until stdin says "exit"
                    yield kat_pb2.ExecResponse(stdout=f"tty {req.rows}x{req.cols}\r\n".encode())
            elif first.tty and req.rows:
                yield kat_pb2.ExecResponse(stdout=f"resized {req.rows}x{req.cols}\r\n".encode())
            elif first.tty and req.stdin:
                yield kat_pb2.ExecResponse(stdout=b"got " + req.stdin)
                if b"exit" in req.stdin:
                    yield kat_pb2.ExecResponse(exited=True, exit_code=0)
                    return
            stdin += req.stdin
        assert first is not None
        out = f"{first.instance_id} ran {' '.join(first.command)}; stdin {stdin.decode()!r}\n"
        yield kat_pb2.ExecResponse(stdout=out.encode())
        yield kat_pb2.ExecResponse(stderr=b"a warning\n")
        yield kat_pb2.ExecResponse(exited=True, exit_code=3)


class SimNet:
    """Simulated agents of one leader, on a background event loop."""

    def __init__(self, leader: Leader) -> None:
        self.leader = leader
        self.world = World()
        self.loop = LoopThread()
        self._next_ip = 2
        self._lock = threading.Lock()

    def close(self) -> None:
        for agent in list(self.world.agents.values()):
            try:
                self.loop.run(agent.stop(), timeout=10)
            except Exception:  # noqa: BLE001, S110 - best effort at teardown
                pass
        self.loop.close()

    def add(self, hostname: str, labels: dict[str, str] | None = None) -> SimAgent:
        """Join a new simulated node through the real Join RPC and start it."""
        with self._lock:
            ip = f"127.0.0.{self._next_ip}"
            self._next_ip += 1
        resp, key = self.leader.join_node(hostname, ip, labels)
        agent = SimAgent(
            self.world,
            self.leader,
            resp.node.metadata.name,
            resp.certificate_pem,
            key,
            ip,
            dict(labels or {}),
        )
        self.world.agents[agent.name] = agent
        self.loop.run(agent.start())
        poll(lambda: agent.connected and agent.snapshot is not None, what=f"{agent.name} up")
        return agent

    def stop(self, agent: SimAgent) -> None:
        self.loop.run(agent.stop(server=False))

    def start(self, agent: SimAgent) -> None:
        self.loop.run(agent.start())

    def remove(self, agent: SimAgent) -> None:
        self.loop.run(agent.stop())
        self.world.agents.pop(agent.name, None)


@dataclass
class Bundle:
    """Write a bundle directory for `katcall apply -f`."""

    root: Path
    files: dict[str, str] = field(default_factory=dict)

    def write(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.glob("*.kat"):
            old.unlink()
        for name, text in self.files.items():
            (self.root / name).write_text(text)
        return self.root


def service(
    name: str,
    *,
    replicas: int | None = 3,
    image: str = "localhost/busybox:latest",
    selector: dict[str, str] | None = None,
    namespace: str = "default",
    kind: str = "SERVICE",
    extra: str = "",
    restart: str = "",
) -> str:
    sel = ""
    if selector:
        sel = "  nodeSelector:\n" + "".join(f"    {k}: {v}\n" for k, v in selector.items())
    reps = f"  replicas: {replicas}\n" if replicas is not None and kind == "SERVICE" else ""
    return (
        "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"spec:\n  type: {kind}\n  source:\n    image: {image}\n{reps}{sel}{restart}{extra}"
        "  container:\n    command: [sh, -c, 'sleep 3600']\n"
        "    resources:\n      requests:\n        cpu: 100m\n        memory: 16Mi\n"
    )


def job_definition(name: str, spec: str, namespace: str = "default") -> str:
    return (
        "apiVersion: kat.dws.rip/v1alpha1\nkind: JobDefinition\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"
    )
