"""Podman as the agent uses it: one `Runtime` per Podman API socket (root's, or one
workload user's; see kat_agent/node/podman/service.py for the services behind them).

The layer's parts, one concept each:
- errors.py: the error model (ContainerRuntimeError with a kind);
- client.py: the typed Podman API client (Podman's URLs and documents);
- spec.py: assigned instance -> InstanceSpec -> Podman's create body (names, labels, limits);
- mounts.py: volumes and the rules host paths and subPaths must pass;
- observe.py: Podman's inspect document -> ObservedContainer;
- this module: `Runtime`, what the reconciler (kat_agent/node/instances.py) and the NodeAgent
  API call, and `ContainerRuntime`, the protocol it shares with the in-memory fake
  (kat_agent/node/podman/fake.py) that unit tests use.

Choices: images are used from local storage when present and pulled only when missing;
`stop` is SIGTERM (or the image's stop signal), then SIGKILL after the grace period;
rootless Podman on cgroup v1 ignores limits, and the warning it gives is logged and returned
by `create`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from internal.core import hostpaths
from internal.core.node_plan import SETTLED
from internal.observability import metrics
from kat_agent.node.podman.client import PodmanAPI, Response, frames
from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind
from kat_agent.node.podman.mounts import DEFAULT_VOLUME_BASE, VolumePreparer
from kat_agent.node.podman.observe import ObservedContainer
from kat_agent.node.podman.orphans import end_container_processes, monitor_gone
from kat_agent.node.podman.spec import LABEL_MANAGED, InstanceSpec, create_body

log = logging.getLogger(__name__)

EXEC_OUTPUT_LIMIT = 64 * 1024


@dataclass(frozen=True)
class ContainerStats:
    """One sample of Podman's stats: cpu time used so far and the clock it was read at
    (both ns; two samples give the cpu use between them), and memory in use and allowed."""

    cpu_nanos: int
    system_nanos: int
    memory_bytes: int
    memory_limit_bytes: int


@dataclass(frozen=True)
class CreateResult:
    container_id: str
    warnings: tuple[str, ...] = ()


class ContainerRuntime(Protocol):
    """The containers of one Podman service, as the node's reconciler uses them. Every
    failure is a ContainerRuntimeError (NOT_FOUND for a container that is gone, UNAVAILABLE
    when Podman does not answer, NAME_CONFLICT when the name is taken)."""

    async def create_and_start(self, spec: InstanceSpec) -> str:
        """Create and start the container of `spec`; its id."""
        ...

    async def observe(self, container_id: str) -> ObservedContainer: ...

    async def list_managed(self) -> list[ObservedContainer]:
        """Every container KAT started on this service, running or not."""
        ...

    async def wait(self, container_id: str) -> int:
        """Wait until the container has stopped; its exit code."""
        ...

    async def stop(self, container_id: str, grace_seconds: float) -> None: ...

    async def remove(self, container_id: str, *, force: bool = False) -> None: ...

    async def exec(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - it also ends the process in the container
    ) -> tuple[int, bytes]:
        """Run `command` in the container (a health check): (exit code, output)."""
        ...

    def logs(
        self, container_id: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]: ...

    def log_frames(
        self,
        container_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[tuple[int, bytes]]: ...

    async def exec_stream(
        self,
        container_id: str,
        command: Sequence[str],
        on_output: Callable[[int, bytes], Awaitable[None]],
        *,
        stdin: AsyncIterator[bytes] | None = None,
        tty: bool = False,
        sizes: asyncio.Queue[tuple[int, int]] | None = None,
    ) -> int: ...

    async def stats(self, container_ids: Sequence[str]) -> dict[str, ContainerStats]:
        """One sample per running container, by container id."""
        ...


class RuntimeBackend(Protocol):
    """One Podman service as the reconciler sees it (services.Backend, or the fake's)."""

    @property
    def key(self) -> str: ...  # "root" or the workload user's name
    @property
    def runtime(self) -> ContainerRuntime: ...
    @property
    def user(self) -> object | None: ...  # the workload user; None for root's Podman
    @property
    def network(self) -> str | None: ...  # the network new containers join


class BackendPool(Protocol):
    """Which Podman service runs what (services.PodmanPool, or the fake's)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def backends(self) -> Sequence[RuntimeBackend]: ...
    async def backend_for(self, namespace: str, workload: str) -> RuntimeBackend: ...
    async def ensure_image(self, backend: RuntimeBackend, ref: str) -> None: ...
    async def release(self, backend: RuntimeBackend) -> None: ...
    async def retire(
        self, backend: RuntimeBackend, namespace: str, workload: str, in_use: Callable[[], bool]
    ) -> None: ...


class Runtime:
    """Containers of one Podman API socket. `owner` (uid, gid) is the workload user
    whose rootless Podman this is: volume directories KAT creates become theirs."""

    def __init__(
        self,
        socket_path: Path | str,
        *,
        volume_base_path: Path = DEFAULT_VOLUME_BASE,
        owner: tuple[int, int] | None = None,
        log_max_bytes: int = 0,
        api_timeout: float = 60.0,
        host_mount_allowed: Sequence[str] = (),
        data_dir: str = hostpaths.DEFAULT_DATA_DIR,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.api = PodmanAPI(socket_path, api_timeout=api_timeout)
        self.log_max_bytes = log_max_bytes  # containerLogMaxSize; 0: no cap
        self.volumes = VolumePreparer(volume_base_path, owner, host_mount_allowed, data_dir)

    async def close(self) -> None:
        await self.api.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ service and images

    async def ping(self) -> bool:
        return await self.api.ping()

    async def image_exists(self, ref: str) -> bool:
        return await self.api.image_exists(ref)

    async def ensure_image(self, ref: str) -> None:
        """Use `ref` from local storage; pull it only when it is missing."""
        if await self.image_exists(ref):
            return
        try:
            error = await self.api.pull_image(ref)
        except ContainerRuntimeError:
            metrics.IMAGE_PULLS.labels("failure").inc()
            raise
        if error is not None or not await self.image_exists(ref):
            metrics.IMAGE_PULLS.labels("failure").inc()
            raise ContainerRuntimeError(
                ErrorKind.IMAGE_NOT_FOUND,
                f"image {ref} is not in this node's Podman storage and pulling it failed: "
                f"{error or 'no image after the pull'}",
            )

        metrics.IMAGE_PULLS.labels("success").inc()

    async def import_image(self, tarball: Path, reference: str, changes: Sequence[str] = ()) -> str:
        """`podman import`: make image `reference` from a root filesystem tarball."""
        return await self.api.import_image(tarball, reference, changes)

    async def save_image(self, ref: str, dest: Path) -> None:
        """Write image `ref` to `dest` as an OCI archive (to copy it to another store)."""
        await self.api.save_image(ref, dest)

    async def load_image(self, src: Path, ref: str) -> None:
        """Load an archive written by `save_image` and make sure it is known as `ref`."""
        names = await self.api.load_image(src, f"load image {ref}")
        if not await self.image_exists(ref) and names:
            await self.api.tag_image(names[0], ref)
        if not await self.image_exists(ref):
            raise ContainerRuntimeError(
                ErrorKind.IMAGE_NOT_FOUND, f"load image {ref}: not present after loading {src}"
            )

    # ------------------------------------------------------------ networks

    async def ensure_network(
        self, name: str, subnet: str, gateway: str, interface: str = ""
    ) -> None:
        """A bridge network `name` on `subnet` with `gateway` (the bridge's address;
        Podman's IPAM gives containers the others). No Podman DNS (KAT serves its own).
        An existing network with another subnet is replaced when no container uses it;
        otherwise ContainerRuntimeError(INVALID)."""
        what = f"network {name}"
        found = await self.api.network_inspect(name)
        if found is not None:
            have = [s.get("subnet") for s in found.get("subnets") or []]
            if have == [subnet]:
                return
            if await self.api.network_users(name):
                raise ContainerRuntimeError(
                    ErrorKind.INVALID,
                    f"{what} has subnet {have} instead of {subnet} and is still in use",
                )
            log.warning("%s had subnet %s; recreating it with %s", what, have, subnet)
            await self.api.network_delete(name)
        body: dict[str, Any] = {
            "name": name,
            "driver": "bridge",
            "subnets": [{"subnet": subnet, "gateway": gateway}],
            "dns_enabled": False,
            "internal": False,
        }
        if interface:
            body["network_interface"] = interface
        await self.api.network_create(body)

    # ------------------------------------------------------------ create and start

    async def create(self, spec: InstanceSpec) -> CreateResult:
        """Create (not start) the container of `spec`; prepares its volumes first."""
        what = f"create container {spec.container_name}"
        try:
            mounts = await asyncio.to_thread(
                self.volumes.bind_mounts, spec.namespace, spec.workload, spec.volumes, spec.mounts
            )
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what}: {exc}") from exc
        data = await self.api.container_create(create_body(spec, mounts, self.log_max_bytes), what)
        warnings = tuple(str(w) for w in (data.get("Warnings") or []))
        for w in warnings:
            log.warning("%s: %s", what, w)
        return CreateResult(str(data["Id"]), warnings)

    async def start(self, container_id: str) -> None:
        await self.api.container_start(container_id)

    async def create_and_start(self, spec: InstanceSpec) -> str:
        """Create and start the container of `spec`; returns its id. A container that
        fails to start is removed again, so a retry does not meet a name conflict."""
        created = await self.create(spec)
        try:
            await self.start(created.container_id)
        except BaseException:
            with contextlib.suppress(ContainerRuntimeError):
                await self.remove(created.container_id, force=True)
            raise
        return created.container_id

    def cluster_storage_path(self, namespace: str, workload: str, volume: str) -> Path:
        return self.volumes.cluster_storage_path(namespace, workload, volume)

    # ------------------------------------------------------------ observe

    async def inspect(self, container_id: str) -> dict[str, Any]:
        """Podman's inspect document of one container."""
        return await self.api.container_inspect(container_id)

    async def observe(self, container_id: str) -> ObservedContainer:
        return _with_monitor(ObservedContainer.from_inspect(await self.inspect(container_id)))

    async def list_managed(self) -> list[ObservedContainer]:
        """Every container KAT started on this socket, running or not."""
        docs = await self.api.container_inspect_all(f"{LABEL_MANAGED}=true")
        return [_with_monitor(ObservedContainer.from_inspect(d)) for d in docs]

    async def wait(self, container_id: str) -> int:
        """Wait until the container has stopped; its exit code."""
        return await self.api.container_wait(container_id)

    async def exit_code(self, container_id: str) -> int | None:
        """The exit code, or None while the container has not exited."""
        return (await self.observe(container_id)).exit_code

    # ------------------------------------------------------------ stop and remove

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        """SIGTERM (or the image's stop signal), then SIGKILL after `grace_seconds`
        (whole seconds, rounded up). Stopping a stopped container is not an error."""
        await self.api.container_stop(container_id, max(0, math.ceil(grace_seconds)))

    async def kill(self, container_id: str, sig: str = "SIGKILL") -> None:
        await self.api.container_kill(container_id, sig)

    async def remove(self, container_id: str, *, force: bool = False) -> None:
        """Remove the container; gone already is fine. `force` also removes a running
        one, killing it at once (SIGKILL): `stop` it first to give it a grace period.
        Processes of it that still run here although Podman lost sight of them are ended."""
        params: dict[str, Any] = {"force": force, "v": True}
        if force:
            params["timeout"] = 0
        await self.api.container_remove(container_id, params)
        # What Podman no longer knew as running may still run (orphans.py): end it too.
        await asyncio.to_thread(end_container_processes, container_id)

    async def stats(self, container_ids: Sequence[str]) -> dict[str, ContainerStats]:
        if not container_ids:
            return {}
        return {
            str(s.get("ContainerID", "")): ContainerStats(
                cpu_nanos=int(s.get("CPUNano") or 0),
                system_nanos=int(s.get("SystemNano") or 0),
                memory_bytes=int(s.get("MemUsage") or 0),
                memory_limit_bytes=int(s.get("MemLimit") or 0),
            )
            for s in await self.api.container_stats(container_ids)
        }

    # ------------------------------------------------------------ logs and exec

    async def logs(
        self, container_id: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """stdout and stderr as Podman stored them, line by line; with `follow` until
        the container stops (or the caller stops iterating)."""
        async for _, payload in self.log_frames(container_id, follow=follow, tail=tail):
            yield payload

    async def log_frames(
        self,
        container_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
        timestamps: bool = False,
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """Like `logs`, as (stream, data) with stream 1 stdout and 2 stderr; `since` (unix
        time) skips older lines and `timestamps` prefixes each line with its time."""
        params = {
            "stdout": "true",
            "stderr": "true",
            "follow": "true" if follow else "false",
            "tail": "all" if tail is None else str(max(0, tail)),
            "timestamps": "true" if timestamps else "false",
        }
        if since is not None:
            params["since"] = str(int(since))
        resp = await self.api.container_logs(container_id, params)
        try:
            async for stream, payload in frames(resp.chunks()):
                yield stream, payload
        finally:
            resp.close()

    async def exec(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109 - it also ends the process in the container
    ) -> tuple[int, bytes]:
        """Run `command` in the container (an exec health check): (exit code, stdout
        and stderr, at most EXEC_OUTPUT_LIMIT bytes). Raises ContainerRuntimeError
        with kind TIMEOUT, after killing the process, if it runs longer than `timeout`."""
        what = f"exec {list(command)} in {container_id}"
        body = {"AttachStdout": True, "AttachStderr": True, "Cmd": list(command)}
        exec_id = await self.api.exec_create(container_id, body, what)
        output = bytearray()
        try:
            async with asyncio.timeout(timeout):
                resp = await self.api.exec_start(exec_id, {"Detach": False, "Tty": False}, what)
                try:
                    async for _, payload in frames(resp.chunks()):
                        output += payload[: max(0, EXEC_OUTPUT_LIMIT - len(output))]
                finally:
                    resp.close()
                return await self._exec_exit(exec_id, what), bytes(output)
        except TimeoutError:
            await self._kill_exec(exec_id, what)
            raise ContainerRuntimeError(
                ErrorKind.TIMEOUT,
                f"{what}: did not finish within {timeout:g}s (killed); "
                f"output so far: {bytes(output[:200])!r}",
            ) from None

    async def _exec_exit(self, exec_id: str, what: str) -> int:
        """The exit code of an exec session, once Podman has seen its process end."""
        while True:
            info = await self.api.exec_inspect(exec_id, what)
            if not info.get("Running"):
                return int(info.get("ExitCode") or 0)
            await asyncio.sleep(0.02)

    async def _kill_exec(self, exec_id: str, what: str) -> None:
        """SIGKILL a timed-out exec process (Podman has no call for it; its host pid
        is in the exec session's inspect)."""
        try:
            info = await self.api.exec_inspect(exec_id, what)
        except ContainerRuntimeError as exc:
            log.warning("%s: could not inspect the exec session: %s", what, exc)
            return
        pid = int(info.get("Pid") or 0) if info else 0
        if pid > 0 and info.get("Running"):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as exc:
                log.warning("%s: could not kill exec process %d: %s", what, pid, exc)

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
        """Run `command` in the container for a person (`katcall exec`): its output is
        passed to `on_output(stream, data)` as it comes (1 stdout, 2 stderr; with `tty`
        everything is 1), `stdin` is fed to it and closed when exhausted (none: closed at
        once). With `tty`, each (rows, cols) put on `sizes` resizes its terminal. Returns
        the exit code. Cancelling kills the process in the container."""
        what = f"exec {list(command)} in {container_id}"
        body = {
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": tty,
            "Cmd": list(command),
        }
        exec_id = await self.api.exec_create(container_id, body, what)
        resp: Response | None = None
        feeder: asyncio.Task[None] | None = None
        resizer: asyncio.Task[None] | None = None
        try:
            resp = await self.api.exec_start(
                exec_id, {"Detach": False, "Tty": tty}, what, upgrade=True
            )
            feeder = asyncio.create_task(_feed(resp.writer, stdin))
            if tty and sizes is not None:
                resizer = asyncio.create_task(self._resize_exec(exec_id, sizes, what))
            if tty:
                async for chunk in resp.chunks():
                    await on_output(1, chunk)
            else:
                async for stream, payload in frames(resp.chunks()):
                    await on_output(2 if stream == 2 else 1, payload)
            return await self._exec_exit(exec_id, what)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._kill_exec(exec_id, what))
            raise
        finally:
            for task in (feeder, resizer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            if resp is not None:
                resp.close()

    async def _resize_exec(
        self, exec_id: str, sizes: asyncio.Queue[tuple[int, int]], what: str
    ) -> None:
        """Resize an exec session's terminal whenever a new size arrives."""
        while True:
            rows, cols = await sizes.get()
            with contextlib.suppress(ContainerRuntimeError):  # it may just have ended
                await self.api.exec_resize(exec_id, rows, cols, what)


async def _feed(writer: asyncio.StreamWriter, data: AsyncIterator[bytes] | None) -> None:
    """Copy `data` to the hijacked connection, then half-close it (EOF on stdin)."""
    try:
        if data is not None:
            async for chunk in data:
                if chunk:
                    writer.write(chunk)
                    await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):  # the process ended and Podman closed the connection
        pass


def _with_monitor(obs: ObservedContainer) -> ObservedContainer:
    """`obs` with `monitor_gone` set (one /proc read, and only for a container in a
    passing state: node_plan then need not wait STUCK_AFTER for one whose conmon died)."""
    if obs.state in SETTLED or not monitor_gone(obs.container_id, obs.monitor_pid):
        return obs
    return replace(obs, monitor_gone=True)
