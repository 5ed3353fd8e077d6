"""An in-memory container runtime behind the same interface as the Podman one
(runtime.ContainerRuntime, runtime.BackendPool), for tests of the node's decisions
without Podman: tests/unit drives the real reconciler (kat_agent/node/instances.py) through
it, and tests/leader_harness.py's simulated agents run on it.

Containers run until told otherwise: `exit(cid, code)` ends one (as its process would),
`vanish(cid)` removes one behind KAT's back (`podman rm -f`). `behave` scripts what every
new container does: exit with a code after some seconds of the given clock, and whether
its health check passes. Every call is recorded in `calls` so tests can assert what the
reconciler did (and did not do).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind
from kat_agent.node.podman.observe import ObservedContainer
from kat_agent.node.podman.runtime import ContainerStats, RuntimeBackend
from kat_agent.node.podman.spec import InstanceSpec

FAKE_CPU_CORES = 0.25
FAKE_MEMORY_BYTES = 8 << 20


@dataclass(frozen=True)
class FakeBehavior:
    """What a new container does: exit with `exit_code` once `exit_after` seconds have
    passed on the runtime's clock (None: run until stopped); `healthy`: its exec health
    checks pass (exit 0) or fail (exit 1)."""

    exit_after: float | None = None
    exit_code: int = 0
    healthy: bool = True


@dataclass
class _Container:
    observed: ObservedContainer
    spec: InstanceSpec
    behavior: FakeBehavior
    started: float
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    logs: list[bytes] = field(default_factory=list)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class FakeRuntime:
    """The containers of one pretend Podman service (see the module docstring)."""

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        behave: Callable[[InstanceSpec], FakeBehavior] = lambda _spec: FakeBehavior(),
    ) -> None:
        self.clock = clock or (lambda: datetime.now(UTC).timestamp())
        self.behave = behave
        self.containers: dict[str, _Container] = {}
        self.images: set[str] = set()
        self.calls: list[tuple[str, str]] = []  # (operation, container name or id)
        self.available = True  # False: every call fails as UNAVAILABLE (Podman down)
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ test controls

    def by_instance(self, instance_id: str) -> ObservedContainer | None:
        self.settle()
        for c in self.containers.values():
            if c.observed.instance_id == instance_id:
                return c.observed
        return None

    def exit(self, container_id: str, code: int) -> None:
        """The container's process ends with `code`."""
        c = self.containers[container_id]
        if c.observed.running:
            c.observed = replace(
                c.observed, state="exited", exit_code=code, finished_at=_utc(self.clock())
            )
            c.exited.set()

    def stick(self, container_id: str, state: str = "stopping") -> None:
        """Podman's record outlives the container's processes (conmon and all killed at
        once): it stays in a passing `state` for ever."""
        c = self.containers[container_id]
        c.observed = replace(c.observed, state=state, pid=0)
        c.exited.set()

    def vanish(self, container_id: str) -> None:
        """`podman rm -f` by someone else."""
        c = self.containers.pop(container_id)
        c.exited.set()

    def settle(self) -> None:
        """Let every container whose scripted exit is due exit."""
        now = self.clock()
        for cid, c in list(self.containers.items()):
            after = c.behavior.exit_after
            if c.observed.running and after is not None and now - c.started >= after:
                self.exit(cid, c.behavior.exit_code)

    def _check(self, op: str, what: str) -> None:
        self.calls.append((op, what))
        if not self.available:
            raise ContainerRuntimeError(ErrorKind.UNAVAILABLE, f"{op} {what}: fake Podman is down")

    def _get(self, container_id: str) -> _Container:
        self.settle()
        c = self.containers.get(container_id)
        if c is None:
            for other in self.containers.values():
                if other.observed.name == container_id:
                    return other
            raise ContainerRuntimeError(ErrorKind.NOT_FOUND, f"no container {container_id}")
        return c

    # ------------------------------------------------------------ ContainerRuntime

    async def create_and_start(self, spec: InstanceSpec) -> str:
        self._check("create", spec.container_name)
        if any(c.observed.name == spec.container_name for c in self.containers.values()):
            raise ContainerRuntimeError(
                ErrorKind.NAME_CONFLICT, f"name {spec.container_name} is already in use"
            )
        if spec.image not in self.images:
            raise ContainerRuntimeError(ErrorKind.IMAGE_NOT_FOUND, f"image {spec.image} not known")
        cid = f"fake{next(self._ids):060d}"
        now = self.clock()
        obs = ObservedContainer(
            container_id=cid,
            name=spec.container_name,
            namespace=spec.namespace,
            workload=spec.workload,
            instance_id=spec.instance_id,
            generation=spec.generation,
            state="running",
            exit_code=None,
            started_at=_utc(now),
            finished_at=None,
            restart_count=0,
            image=spec.image,
            oom_killed=False,
            labels=spec.labels(),
        )
        self.containers[cid] = _Container(obs, spec, self.behave(spec), now)
        return cid

    async def observe(self, container_id: str) -> ObservedContainer:
        self._check("observe", container_id)
        return self._get(container_id).observed

    async def list_managed(self) -> list[ObservedContainer]:
        self._check("list", "")
        self.settle()
        return [c.observed for c in self.containers.values()]

    async def wait(self, container_id: str) -> int:
        self._check("wait", container_id)
        c = self._get(container_id)
        while not c.exited.is_set():
            # Scripted exits are due on the clock: look again now and then.
            try:
                async with asyncio.timeout(0.05):
                    await c.exited.wait()
            except TimeoutError:
                self.settle()
        if self.containers.get(c.observed.container_id) is not c:
            raise ContainerRuntimeError(ErrorKind.NOT_FOUND, f"no container {container_id}")
        return c.observed.exit_code or 0

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        self._check("stop", container_id)
        c = self._get(container_id)
        self.exit(c.observed.container_id, 143)  # SIGTERM, obeyed at once

    async def remove(self, container_id: str, *, force: bool = False) -> None:
        self._check("remove", container_id)
        try:
            c = self._get(container_id)
        except ContainerRuntimeError:
            return  # gone already is fine
        if c.observed.running and not force:
            raise ContainerRuntimeError(ErrorKind.OTHER, f"{container_id} is running")
        self.exit(c.observed.container_id, 137)
        self.containers.pop(c.observed.container_id, None)

    async def exec(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - the interface's
    ) -> tuple[int, bytes]:
        self._check("exec", container_id)
        c = self._get(container_id)
        if not c.observed.running:
            raise ContainerRuntimeError(ErrorKind.NOT_RUNNING, f"{container_id} is not running")
        return (0, b"ok\n") if c.behavior.healthy else (1, b"unhealthy\n")

    async def logs(
        self, container_id: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]:
        self._check("logs", container_id)
        lines = self._get(container_id).logs
        for line in lines if tail is None else lines[len(lines) - tail :]:
            yield line

    async def log_frames(
        self,
        container_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[tuple[int, bytes]]:
        """The fake's lines are all stdout and carry no time."""
        async for line in self.logs(container_id, follow=follow, tail=tail):
            yield 1, line

    async def stats(self, container_ids: Sequence[str]) -> dict[str, ContainerStats]:
        """The fake's running containers use a quarter of a core and 8 MiB."""
        self._check("stats", "")
        now = self.clock()
        out = {}
        for cid in container_ids:
            c = self.containers.get(cid)
            if c is not None and c.observed.running:
                cpu = int((now - c.started) * 1e9 * FAKE_CPU_CORES)
                out[cid] = ContainerStats(cpu, int(now * 1e9), FAKE_MEMORY_BYTES, 0)
        return out

    async def exec_stream(
        self,
        container_id: str,
        command: Sequence[str],
        on_output: Callable[[int, bytes], Awaitable[None]],
        *,
        stdin: AsyncIterator[bytes] | None = None,
        tty: bool = False,
        sizes: asyncio.Queue[tuple[int, int]] | None = None,
    ) -> int:
        code, output = await self.exec(container_id, command, 10.0)
        await on_output(1, output)
        return code


@dataclass
class FakeBackend:
    """The one backend of a FakePool: root's pretend Podman."""

    runtime: FakeRuntime
    key: str = "root"
    user: object | None = None
    network: str | None = None


class FakePool:
    """A BackendPool with one FakeRuntime for every workload; images are "pulled" by
    adding them to the runtime's images (an image named in `missing` cannot be pulled)."""

    def __init__(self, runtime: FakeRuntime | None = None) -> None:
        self.backend = FakeBackend(runtime or FakeRuntime())
        self.missing: set[str] = set()
        self.started = False

    @property
    def runtime(self) -> FakeRuntime:
        return self.backend.runtime

    async def start(self) -> None:
        self.runtime._check("start", "")
        self.started = True

    async def close(self) -> None:
        self.started = False

    def backends(self) -> Sequence[RuntimeBackend]:
        return [self.backend] if self.started else []

    async def backend_for(self, namespace: str, workload: str) -> RuntimeBackend:
        return self.backend

    async def ensure_image(self, backend: RuntimeBackend, ref: str) -> None:
        self.runtime._check("pull", ref)
        if ref in self.missing:
            raise ContainerRuntimeError(
                ErrorKind.IMAGE_NOT_FOUND, f"image {ref} is not in this node's storage"
            )
        self.runtime.images.add(ref)

    async def release(self, backend: RuntimeBackend) -> None:
        pass

    async def retire(
        self, backend: RuntimeBackend, namespace: str, workload: str, in_use: Callable[[], bool]
    ) -> None:
        pass
