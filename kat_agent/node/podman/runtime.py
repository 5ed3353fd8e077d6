"""Podman as the agent uses it: one `Runtime` per Podman API socket (root's, or one
workload user's; see kat_agent/node/podman/service.py for the services behind them).

Every container KAT starts is named `kat_<namespace>_<workload>_<instance-id>` and
labelled (LABEL_*), so that `list_managed` finds them again after an agent restart and
the agent adopts them instead of starting new ones.

Plain request/response calls go through the `podman` library (run in a thread: it is
blocking). Calls that stream or block for long (logs, exec, stop, wait) use a small
asyncio HTTP client on the same socket instead, so that they can be cancelled and time
out without leaving a thread behind. Every Podman failure is raised as one
`ContainerRuntimeError` with a `kind` (image not found, name conflict, bad mount, ...).

Choices:
- command/args follow Kubernetes: `command` replaces the image's ENTRYPOINT (and then
  its CMD is not used), `args` replaces its CMD.
- limits.cpu becomes a CFS quota over a 100 ms period (at least 1 ms); limits.memory
  the memory limit, with swap capped to the same value (no extra swap). Requests are
  for the scheduler only. Rootless Podman on cgroup v1 ignores limits; the warning it
  gives is logged and returned by `create`.
- the restart policy is "no": restarts are the agent's (SPEC section 3).
- images are used from local storage when present and pulled only when missing.
- volumes: simpleClusterStorage is `<volume_base_path>/<namespace>/<workload>/<volume>`,
  created on demand (the last directory owned by `owner`, the workload user, when
  rootless). hostMount follows Kubernetes' hostPath types: DIRECTORY_OR_CREATE makes
  the directory (and its parents), DIRECTORY, FILE, SOCKET must exist and be one,
  FILE_OR_CREATE makes an empty file (its directory must exist); no ensureType only
  requires the path to exist. subPath is relative, without `..`, created as a
  directory when missing, and may not leave its volume (also not through a symlink).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import os
import re
import signal
import stat
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from podman import PodmanClient
from podman.errors import APIError

from api.v1alpha1 import kat_pb2
from internal.manifests.quantity import parse_cpu, parse_memory
from internal.observability import metrics

log = logging.getLogger(__name__)

LABEL_PREFIX = "kat.dws.rip/"
LABEL_WORKLOAD = LABEL_PREFIX + "workload"
LABEL_NAMESPACE = LABEL_PREFIX + "namespace"
LABEL_INSTANCE = LABEL_PREFIX + "instance"
LABEL_GENERATION = LABEL_PREFIX + "generation"
LABEL_MANAGED = LABEL_PREFIX + "managed"

DEFAULT_VOLUME_BASE = Path("/var/lib/kat/volumes")
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000
LOG_DRIVER = "k8s-file"
EXEC_OUTPUT_LIMIT = 64 * 1024

T = TypeVar("T")


class ErrorKind(enum.Enum):
    IMAGE_NOT_FOUND = "image not found"
    NAME_CONFLICT = "name conflict"
    BAD_MOUNT = "bad mount"
    NOT_FOUND = "container not found"
    NOT_RUNNING = "container not running"
    TIMEOUT = "timeout"
    UNAVAILABLE = "podman unavailable"
    INVALID = "invalid spec"
    OTHER = "podman error"


class ContainerRuntimeError(RuntimeError):
    """Anything that went wrong in Podman or in preparing a container for it."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _classify(status: int | None, message: str, default: ErrorKind) -> ErrorKind:
    low = message.lower()
    if status is None:
        return ErrorKind.UNAVAILABLE
    if "image not known" in low or "image not found" in low:
        return ErrorKind.IMAGE_NOT_FOUND
    if "already in use" in low:
        return ErrorKind.NAME_CONFLICT
    if "state improper" in low or "is not running" in low:
        return ErrorKind.NOT_RUNNING
    if status == 404:
        return ErrorKind.NOT_FOUND
    if "mount" in low or "statfs" in low:
        return ErrorKind.BAD_MOUNT
    return default


def _error(
    what: str, status: int | None, message: str, default: ErrorKind
) -> ContainerRuntimeError:
    kind = _classify(status, message, default)
    if kind is ErrorKind.UNAVAILABLE:
        message = message or "no answer from the Podman service"
    return ContainerRuntimeError(kind, f"{what}: {message}")


def _from_api_error(what: str, exc: APIError, default: ErrorKind) -> ContainerRuntimeError:
    message = exc.explanation or str(exc)
    if exc.status_code is None and exc.__cause__ is not None:
        message = f"{message}: {exc.__cause__}"
    return _error(what, exc.status_code, message, default)


# ---------------------------------------------------------------- what to run


@dataclass(frozen=True)
class ClusterStorageVolume:
    """simpleClusterStorage: a directory per namespace, workload and volume."""


@dataclass(frozen=True)
class HostPathVolume:
    """hostMount; ensure_type is a HostMount.EnsureType name, "" for unspecified."""

    path: Path
    ensure_type: str = ""


VolumeSource = ClusterStorageVolume | HostPathVolume


@dataclass(frozen=True)
class MountSpec:
    volume: str
    mount_path: str
    sub_path: str = ""
    read_only: bool = False


@dataclass(frozen=True)
class InstanceSpec:
    """One container to run: an instance of a workload at a generation."""

    namespace: str
    workload: str
    instance_id: str
    generation: int
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    volumes: Mapping[str, VolumeSource] = field(default_factory=dict)
    mounts: tuple[MountSpec, ...] = ()
    # For the networking issue: a named Podman network and an address in it.
    network: str | None = None
    static_ip: str | None = None
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def container_name(self) -> str:
        return f"kat_{self.namespace}_{self.workload}_{self.instance_id}"

    def labels(self) -> dict[str, str]:
        return {
            **self.extra_labels,
            LABEL_WORKLOAD: self.workload,
            LABEL_NAMESPACE: self.namespace,
            LABEL_INSTANCE: self.instance_id,
            LABEL_GENERATION: str(self.generation),
            LABEL_MANAGED: "true",
        }

    @classmethod
    def from_proto(
        cls,
        instance: kat_pb2.Instance,
        spec: kat_pb2.WorkloadSpec,
        *,
        image: str | None = None,
        network: str | None = None,
        static_ip: str | None = None,
    ) -> InstanceSpec:
        """From an assigned instance and its workload's spec. `image` overrides
        spec.source.image (an image built from spec.source.git)."""
        where = f"workload {instance.namespace}/{instance.workload}"
        ref = image or spec.source.image
        if not ref:
            raise ContainerRuntimeError(ErrorKind.INVALID, f"{where}: no image to run")
        container = spec.container
        limits = container.resources.limits
        try:
            cpu = parse_cpu(limits.cpu) if limits.cpu else None
            memory = parse_memory(limits.memory) if limits.memory else None
        except ValueError as exc:
            raise ContainerRuntimeError(ErrorKind.INVALID, f"{where}: {exc}") from exc
        volumes: dict[str, VolumeSource] = {}
        for v in spec.volumes:
            kind = v.WhichOneof("source")
            if kind == "host_mount":
                ensure = kat_pb2.HostMount.EnsureType.Name(v.host_mount.ensure_type)
                volumes[v.name] = HostPathVolume(
                    Path(v.host_mount.host_path),
                    "" if ensure == "ENSURE_TYPE_UNSPECIFIED" else ensure,
                )
            elif kind == "simple_cluster_storage":
                volumes[v.name] = ClusterStorageVolume()
            else:
                raise ContainerRuntimeError(
                    ErrorKind.INVALID, f"{where}: volume {v.name!r} has no source"
                )
        return cls(
            namespace=instance.namespace,
            workload=instance.workload,
            instance_id=instance.id,
            generation=instance.generation,
            image=ref,
            command=tuple(container.command),
            args=tuple(container.args),
            env=tuple((e.name, e.value) for e in container.env),
            cpu_millis=cpu,
            memory_bytes=memory,
            volumes=volumes,
            mounts=tuple(
                MountSpec(m.name, m.mount_path, m.sub_path, m.read_only)
                for m in container.volume_mounts
            ),
            network=network,
            static_ip=static_ip,
        )


# ---------------------------------------------------------------- what runs

_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _parse_time(text: str | None) -> datetime | None:
    """Podman's RFC 3339 times (nanoseconds; year 1 for "never") -> aware datetime."""
    if not text:
        return None
    m = _TIME.match(text)
    if not m:
        return None
    base, frac, zone = m.groups()
    value = datetime.fromisoformat(
        f"{base}.{(frac or '0')[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}"
    )
    return None if value.year <= 1 else value.astimezone(UTC)


_STATES = {"stopped": "exited", "configured": "created", "initialized": "created"}


@dataclass(frozen=True)
class ObservedContainer:
    """A container as Podman reports it. `state` is running, exited, created, paused
    (or Podman's word for anything else); `exit_code` is None unless it exited. The
    times are Podman's: for a very short run FinishedAt can precede StartedAt."""

    container_id: str
    name: str
    namespace: str
    workload: str
    instance_id: str
    generation: int
    state: str
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None
    restart_count: int
    image: str
    oom_killed: bool
    labels: Mapping[str, str]
    # The container's address as Podman assigned it ("" without a network of its own,
    # e.g. rootless slirp4netns); with several networks, the one named in PREFERRED_NETWORK
    # if present, else the first in name order.
    ip: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> ObservedContainer:
        config = data.get("Config") or {}
        labels = dict(config.get("Labels") or {})
        st = data.get("State") or {}
        status = str(st.get("Status") or "unknown")
        state = _STATES.get(status, status)
        try:
            generation = int(labels.get(LABEL_GENERATION) or 0)
        except ValueError:
            generation = 0
        return cls(
            container_id=str(data["Id"]),
            name=str(data.get("Name") or "").lstrip("/"),
            namespace=labels.get(LABEL_NAMESPACE, ""),
            workload=labels.get(LABEL_WORKLOAD, ""),
            instance_id=labels.get(LABEL_INSTANCE, ""),
            generation=generation,
            state=state,
            exit_code=int(st.get("ExitCode") or 0) if state == "exited" else None,
            started_at=_parse_time(st.get("StartedAt")),
            finished_at=_parse_time(st.get("FinishedAt")) if state == "exited" else None,
            restart_count=int(data.get("RestartCount") or 0),
            image=str(data.get("ImageName") or config.get("Image") or ""),
            oom_killed=bool(st.get("OOMKilled")),
            labels=labels,
            ip=_address(data.get("NetworkSettings") or {}),
        )


PREFERRED_NETWORK = "kat"


def _address(settings: Mapping[str, Any]) -> str:
    networks = settings.get("Networks") or {}
    names = sorted(networks, key=lambda n: (n != PREFERRED_NETWORK, n))
    for name in names:
        ip = (networks.get(name) or {}).get("IPAddress")
        if ip:
            return str(ip)
    return str(settings.get("IPAddress") or "")


@dataclass(frozen=True)
class CreateResult:
    container_id: str
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------- HTTP on the socket


class _Response:
    """One HTTP/1.1 response read from a unix socket (Connection: close)."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.status = status
        self.headers = headers
        self._reader = reader
        self._writer = writer

    async def chunks(self) -> AsyncIterator[bytes]:
        r = self._reader
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = await r.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                yield await r.readexactly(size)
                await r.readexactly(2)
        elif "content-length" in self.headers:
            left = int(self.headers["content-length"])
            while left > 0:
                data = await r.read(min(left, 65536))
                if not data:
                    return
                left -= len(data)
                yield data
        else:  # hijacked stream (exec): until the server closes
            while data := await r.read(65536):
                yield data

    async def body(self, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        async for chunk in self.chunks():
            out += chunk[: max(0, limit - len(out))]
        return bytes(out)

    async def json(self) -> Any:
        data = await self.body()
        return json.loads(data) if data.strip() else None

    async def error_message(self) -> str:
        with contextlib.suppress(Exception):
            data = await self.body()
            with contextlib.suppress(ValueError):
                body = json.loads(data)
                if isinstance(body, dict) and body.get("message"):
                    return str(body["message"])
            return data.decode(errors="replace").strip() or f"HTTP {self.status}"
        return f"HTTP {self.status}"

    @property
    def writer(self) -> asyncio.StreamWriter:
        """The request side of a hijacked connection (stdin of an exec)."""
        return self._writer

    def close(self) -> None:
        self._writer.close()


async def _frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """Podman's multiplexed stream: 8-byte headers (stream, 0, 0, 0, big-endian size)."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        while len(buf) >= 8:
            size = int.from_bytes(buf[4:8], "big")
            if len(buf) < 8 + size:
                break
            yield buf[0], bytes(buf[8 : 8 + size])
            del buf[: 8 + size]
    if buf:
        yield 1, bytes(buf)


_PODMAN_VERBS = frozenset({"create", "start", "stop", "kill", "wait", "logs", "json", "exec"})


def podman_operation(method: str, path: str) -> str:
    """A bounded name for a Podman API request: "POST containers/start" for
    POST containers/<id>/start (ids and names left out)."""
    segs = path.strip("/").split("/")
    last = segs[-1] if len(segs) > 1 and segs[-1] in _PODMAN_VERBS else ""
    return f"{method} {segs[0]}/{last}" if last else f"{method} {segs[0]}"


def _tag_params(ref: str) -> dict[str, str]:
    """repo and tag of an image reference (the tag is "latest" when none is given)."""
    repo, tag = ref, "latest"
    last = ref.rsplit("/", 1)[-1]
    if ":" in last and "@" not in last:
        repo, tag = ref.rsplit(":", 1)
    return {"repo": repo, "tag": tag}


# ---------------------------------------------------------------- the runtime


class Runtime:
    """Containers of one Podman API socket. `owner` (uid, gid) is the workload user
    whose rootless Podman this is: volume directories KAT creates become theirs."""

    def __init__(
        self,
        socket_path: Path | str,
        *,
        volume_base_path: Path = DEFAULT_VOLUME_BASE,
        owner: tuple[int, int] | None = None,
        api_timeout: float = 60.0,
        log_max_bytes: int = 0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.log_max_bytes = log_max_bytes  # containerLogMaxSize; 0: no cap
        self.volume_base_path = Path(volume_base_path)
        self.owner = owner
        self._client = PodmanClient(base_url=f"unix://{self.socket_path}", timeout=api_timeout)
        self._prefix = self._client.api.path_prefix  # "/v<version>/libpod/"

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    def _log_size(self) -> dict[str, int]:
        return {"size": self.log_max_bytes} if self.log_max_bytes > 0 else {}

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ plumbing

    async def _blocking(
        self, what: str, fn: Callable[[], T], default: ErrorKind = ErrorKind.OTHER
    ) -> T:
        try:
            with metrics.timed(metrics.PODMAN_SECONDS, operation=what.split(" ", 1)[0]):
                return await asyncio.to_thread(fn)
        except APIError as exc:
            raise _from_api_error(what, exc, default) from exc

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        upgrade: bool = False,
    ) -> _Response:
        """One request on a connection of its own. `upgrade` asks Podman to hijack the
        connection (exec with stdin): after the answer it carries raw data both ways."""
        query = f"?{urlencode(params, doseq=True)}" if params else ""
        payload = b"" if body is None else json.dumps(body).encode()
        connection = "Upgrade\r\nUpgrade: tcp" if upgrade else "close"
        head = (
            f"{method} {self._prefix}{path}{query} HTTP/1.1\r\nHost: podman\r\n"
            f"Connection: {connection}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as exc:
            raise _error(
                what, None, f"Podman at {self.socket_path}: {exc}", ErrorKind.OTHER
            ) from exc
        try:
            writer.write(head.encode() + payload)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise _error(what, None, f"bad HTTP answer {status_line!r}", ErrorKind.OTHER)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
        except OSError as exc:
            writer.close()
            raise _error(
                what, None, f"Podman at {self.socket_path}: {exc}", ErrorKind.OTHER
            ) from exc
        except BaseException:
            writer.close()
            raise
        op = podman_operation(method, path)
        if not op.endswith("/wait"):  # a wait answers when the container exits
            metrics.PODMAN_SECONDS.labels(op).observe(time.perf_counter() - started)
        return _Response(int(parts[1]), headers, reader, writer)

    async def _call_json(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        ok: Sequence[int] = (200, 201, 204, 304),
        default: ErrorKind = ErrorKind.OTHER,
    ) -> tuple[int, Any]:
        resp = await self._request(method, path, what=what, params=params, body=body)
        try:
            if resp.status not in ok:
                raise _error(what, resp.status, await resp.error_message(), default)
            return resp.status, await resp.json()
        finally:
            resp.close()

    @staticmethod
    def _id(container_id: str) -> str:
        return quote(container_id, safe="")

    # ------------------------------------------------------------ service and images

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.to_thread(self._client.ping))
        except (APIError, OSError):
            return False

    async def image_exists(self, ref: str) -> bool:
        return await self._blocking(f"image {ref}", lambda: self._client.images.exists(ref))

    async def ensure_image(self, ref: str) -> None:
        """Use `ref` from local storage; pull it only when it is missing."""
        if await self.image_exists(ref):
            return
        what = f"image {ref}"

        def pull() -> str | None:
            resp = self._client.api.post(
                "/images/pull", params={"reference": ref, "policy": "missing", "quiet": True}
            )
            resp.raise_for_status()
            error = None
            for line in resp.text.splitlines():
                with contextlib.suppress(ValueError):
                    item = json.loads(line)
                    if isinstance(item, dict) and item.get("error"):
                        error = str(item["error"])
            return error

        try:
            error = await self._blocking("pull", pull, ErrorKind.IMAGE_NOT_FOUND)
        except ContainerRuntimeError:
            metrics.IMAGE_PULLS.labels("failure").inc()
            raise
        if error is not None or not await self.image_exists(ref):
            metrics.IMAGE_PULLS.labels("failure").inc()
            raise ContainerRuntimeError(
                ErrorKind.IMAGE_NOT_FOUND,
                f"{what} is not in this node's Podman storage and pulling it failed: "
                f"{error or 'no image after the pull'}",
            )

        metrics.IMAGE_PULLS.labels("success").inc()

    async def import_image(self, tarball: Path, reference: str, changes: Sequence[str] = ()) -> str:
        """`podman import`: make image `reference` from a root filesystem tarball."""

        def run() -> str:
            with open(tarball, "rb") as f:
                resp = self._client.api.post(
                    "/images/import",
                    params={"reference": reference, "changes": list(changes)},
                    data=f,
                    headers={"Content-Type": "application/x-tar"},
                )
            resp.raise_for_status()
            return str(resp.json()["Id"])

        try:
            return await self._blocking(f"import {tarball} as {reference}", run)
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.OTHER, f"import {tarball}: {exc}") from exc

    async def save_image(self, ref: str, dest: Path) -> None:
        """Write image `ref` to `dest` as an OCI archive (to copy it to another store)."""

        def run() -> None:
            resp = self._client.api.get(
                f"/images/{quote(ref, safe='')}/get", params={"format": "oci-archive"}, stream=True
            )
            resp.raise_for_status()
            with open(dest, "wb") as f:
                for chunk in resp.iter_content(1 << 20):
                    f.write(chunk)

        try:
            await self._blocking(f"save image {ref}", run, ErrorKind.IMAGE_NOT_FOUND)
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.OTHER, f"save image {ref}: {exc}") from exc

    async def load_image(self, src: Path, ref: str) -> None:
        """Load an archive written by `save_image` and make sure it is known as `ref`."""

        def run() -> list[str]:
            with open(src, "rb") as f:
                resp = self._client.api.post(
                    "/images/load", data=f, headers={"Content-Type": "application/x-tar"}
                )
            resp.raise_for_status()
            body = resp.json() if resp.content.strip() else {}
            return [str(n) for n in (body.get("Names") or [])] if isinstance(body, dict) else []

        try:
            names = await self._blocking(f"load image {ref}", run)
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.OTHER, f"load image {ref}: {exc}") from exc
        if not await self.image_exists(ref) and names:
            await self._call_json(
                "POST",
                f"images/{quote(names[0], safe='')}/tag",
                what=f"tag {names[0]} as {ref}",
                params=_tag_params(ref),
                ok=(200, 201),
            )
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
        status, found = await self._call_json(
            "GET", f"networks/{quote(name, safe='')}/json", what=what, ok=(200, 404)
        )
        if status == 200 and isinstance(found, dict):
            have = [s.get("subnet") for s in found.get("subnets") or []]
            if have == [subnet]:
                return
            users = await self._call_json(
                "GET",
                "containers/json",
                what=what,
                params={"all": "true", "filters": json.dumps({"network": [name]})},
            )
            if users[1]:
                raise ContainerRuntimeError(
                    ErrorKind.INVALID,
                    f"{what} has subnet {have} instead of {subnet} and is still in use",
                )
            log.warning("%s had subnet %s; recreating it with %s", what, have, subnet)
            await self._call_json(
                "DELETE", f"networks/{quote(name, safe='')}", what=what, ok=(200, 204, 404)
            )
        body: dict[str, Any] = {
            "name": name,
            "driver": "bridge",
            "subnets": [{"subnet": subnet, "gateway": gateway}],
            "dns_enabled": False,
            "internal": False,
        }
        if interface:
            body["network_interface"] = interface
        # 409: made meanwhile (by another agent of this storage)
        await self._call_json("POST", "networks/create", what=what, body=body, ok=(200, 201, 409))

    # ------------------------------------------------------------ create and start

    async def create(self, spec: InstanceSpec) -> CreateResult:
        """Create (not start) the container of `spec`; prepares its volumes first."""
        what = f"create container {spec.container_name}"
        try:
            mounts = await asyncio.to_thread(self._prepare_mounts, spec)
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what}: {exc}") from exc
        body: dict[str, Any] = {
            "name": spec.container_name,
            "image": spec.image,
            "labels": spec.labels(),
            "env": dict(spec.env),
            "mounts": mounts,
            "log_configuration": {"driver": LOG_DRIVER, **self._log_size()},
            "restart_policy": "no",
        }
        if spec.command:
            body["entrypoint"] = list(spec.command)
        if spec.args:
            body["command"] = list(spec.args)
        limits: dict[str, Any] = {}
        if spec.memory_bytes:
            limits["memory"] = {"limit": spec.memory_bytes, "swap": spec.memory_bytes}
        if spec.cpu_millis:
            quota = max(MIN_CPU_QUOTA_US, spec.cpu_millis * CPU_PERIOD_US // 1000)
            limits["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
        if limits:
            body["resource_limits"] = limits
        if spec.network:
            body["netns"] = {"nsmode": "bridge"}
            body["networks"] = {
                spec.network: {"static_ips": [spec.static_ip]} if spec.static_ip else {}
            }
        _, data = await self._call_json("POST", "containers/create", what=what, body=body)
        warnings = tuple(str(w) for w in (data.get("Warnings") or []))
        for w in warnings:
            log.warning("%s: %s", what, w)
        return CreateResult(str(data["Id"]), warnings)

    async def start(self, container_id: str) -> None:
        await self._call_json(
            "POST", f"containers/{self._id(container_id)}/start", what=f"start {container_id}"
        )

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

    # ------------------------------------------------------------ volumes

    def _chown(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, *self.owner)

    def _mkdirs(self, path: Path, *, own_leaf: bool) -> None:
        """mkdir -p; the directories made are root's (0755), the last one `owner`'s."""
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        if own_leaf and path in missing:
            self._chown(path)

    def _host_path(self, name: str, vol: HostPathVolume) -> Path:
        path = vol.path
        what = f"hostMount volume {name!r} ({path})"
        if not path.is_absolute():
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what}: hostPath must be absolute")
        try:
            st: os.stat_result | None = path.stat()
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what}: {exc}") from exc
        t = vol.ensure_type

        def fail(problem: str) -> ContainerRuntimeError:
            return ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what}: {problem}")

        if t == "DIRECTORY_OR_CREATE":
            if st is None:
                self._mkdirs(path, own_leaf=True)
            elif not stat.S_ISDIR(st.st_mode):
                raise fail("exists and is not a directory")
        elif t == "DIRECTORY":
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise fail("is not an existing directory (ensureType DIRECTORY)")
        elif t == "FILE_OR_CREATE":
            if st is None:
                if not path.parent.is_dir():
                    raise fail(f"its directory {path.parent} does not exist")
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                    self._chown(path)
            elif not stat.S_ISREG(st.st_mode):
                raise fail("exists and is not a regular file")
        elif t == "FILE":
            if st is None or not stat.S_ISREG(st.st_mode):
                raise fail("is not an existing regular file (ensureType FILE)")
        elif t == "SOCKET":
            if st is None or not stat.S_ISSOCK(st.st_mode):
                raise fail("is not an existing unix socket (ensureType SOCKET)")
        elif t == "":
            if st is None:
                raise fail("does not exist")
        else:
            raise fail(f"unknown ensureType {t}")
        return path

    def _sub_path(self, base: Path, mount: MountSpec) -> Path:
        sub = mount.sub_path
        if not sub:
            return base
        what = f"volumeMount {mount.volume!r} at {mount.mount_path}: subPath {sub!r}"
        pure = PurePosixPath(sub)
        if pure.is_absolute() or ".." in pure.parts:
            raise ContainerRuntimeError(
                ErrorKind.BAD_MOUNT, f"{what} must be relative and without '..'"
            )
        target = base / pure
        if not target.exists() and not target.is_symlink() and base.is_dir():
            self._mkdirs(target, own_leaf=True)
        real, real_base = target.resolve(), base.resolve()
        if real != real_base and real_base not in real.parents:
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what} leads out of its volume")
        if not real.exists():
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what} does not exist")
        return target

    def cluster_storage_path(self, namespace: str, workload: str, volume: str) -> Path:
        return self.volume_base_path / namespace / workload / volume

    def _prepare_mounts(self, spec: InstanceSpec) -> list[dict[str, Any]]:
        sources: dict[str, Path] = {}
        for name, vol in spec.volumes.items():
            if isinstance(vol, HostPathVolume):
                sources[name] = self._host_path(name, vol)
            else:
                path = self.cluster_storage_path(spec.namespace, spec.workload, name)
                self._mkdirs(path, own_leaf=True)
                sources[name] = path
        mounts: list[dict[str, Any]] = []
        for m in spec.mounts:
            if m.volume not in sources:
                raise ContainerRuntimeError(
                    ErrorKind.BAD_MOUNT, f"volumeMount {m.mount_path}: no volume named {m.volume!r}"
                )
            if not m.mount_path.startswith("/"):
                raise ContainerRuntimeError(
                    ErrorKind.BAD_MOUNT, f"volumeMount {m.volume!r}: mountPath must be absolute"
                )
            source = self._sub_path(sources[m.volume], m)
            mounts.append(
                {
                    "type": "bind",
                    "source": str(source),
                    "destination": m.mount_path,
                    "options": ["rbind", "ro" if m.read_only else "rw"],
                }
            )
        return mounts

    # ------------------------------------------------------------ observe

    async def inspect(self, container_id: str) -> dict[str, Any]:
        """Podman's inspect document of one container."""

        def run() -> dict[str, Any]:
            resp = self._client.api.get(f"/containers/{self._id(container_id)}/json")
            resp.raise_for_status()
            return dict(resp.json())

        return await self._blocking(f"inspect {container_id}", run)

    async def observe(self, container_id: str) -> ObservedContainer:
        return ObservedContainer.from_inspect(await self.inspect(container_id))

    async def list_managed(self) -> list[ObservedContainer]:
        """Every container KAT started on this socket, running or not."""

        def run() -> list[dict[str, Any]]:
            found = self._client.containers.list(
                all=True, filters={"label": f"{LABEL_MANAGED}=true"}
            )
            out = []
            for c in found:
                resp = self._client.api.get(f"/containers/{c.id}/json")
                if resp.status_code == 404:  # removed meanwhile
                    continue
                resp.raise_for_status()
                out.append(dict(resp.json()))
            return out

        docs = await self._blocking("list managed containers", run)
        return [ObservedContainer.from_inspect(d) for d in docs]

    async def wait(self, container_id: str) -> int:
        """Wait until the container has stopped; its exit code."""
        what = f"wait for {container_id}"
        _, data = await self._call_json(
            "POST", f"containers/{self._id(container_id)}/wait", what=what, ok=(200,)
        )
        return int(data)

    async def exit_code(self, container_id: str) -> int | None:
        """The exit code, or None while the container has not exited."""
        return (await self.observe(container_id)).exit_code

    # ------------------------------------------------------------ stop and remove

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        """SIGTERM (or the image's stop signal), then SIGKILL after `grace_seconds`
        (whole seconds, rounded up). Stopping a stopped container is not an error."""
        grace = max(0, math.ceil(grace_seconds))
        await self._call_json(
            "POST",
            f"containers/{self._id(container_id)}/stop",
            what=f"stop {container_id}",
            params={"timeout": grace},
        )

    async def kill(self, container_id: str, sig: str = "SIGKILL") -> None:
        await self._call_json(
            "POST",
            f"containers/{self._id(container_id)}/kill",
            what=f"kill {container_id}",
            params={"signal": sig},
        )

    async def remove(self, container_id: str, *, force: bool = False) -> None:
        """Remove the container; gone already is fine. `force` also removes a running
        one, killing it at once (SIGKILL): `stop` it first to give it a grace period."""
        params: dict[str, Any] = {"force": force, "v": True}
        if force:
            params["timeout"] = 0

        def run() -> None:
            resp = self._client.api.delete(f"/containers/{self._id(container_id)}", params=params)
            if resp.status_code != 404:
                resp.raise_for_status()

        await self._blocking(f"remove {container_id}", run)

    # ------------------------------------------------------------ logs and exec

    async def logs(
        self, container_id: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """stdout and stderr as Podman stored them, line by line; with `follow` until
        the container stops (or the caller stops iterating)."""
        what = f"logs of {container_id}"
        params = {
            "stdout": "true",
            "stderr": "true",
            "follow": "true" if follow else "false",
            "tail": "all" if tail is None else str(max(0, tail)),
        }
        resp = await self._request(
            "GET", f"containers/{self._id(container_id)}/logs", what=what, params=params
        )
        try:
            if resp.status != 200:
                raise _error(what, resp.status, await resp.error_message(), ErrorKind.OTHER)
            async for _, payload in _frames(resp.chunks()):
                yield payload
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
        _, created = await self._call_json(
            "POST",
            f"containers/{self._id(container_id)}/exec",
            what=what,
            body={"AttachStdout": True, "AttachStderr": True, "Cmd": list(command)},
        )
        exec_id = quote(str(created["Id"]), safe="")
        output = bytearray()
        try:
            async with asyncio.timeout(timeout):
                resp = await self._request(
                    "POST",
                    f"exec/{exec_id}/start",
                    what=what,
                    body={"Detach": False, "Tty": False},
                )
                try:
                    if resp.status != 200:
                        raise _error(what, resp.status, await resp.error_message(), ErrorKind.OTHER)
                    async for _, payload in _frames(resp.chunks()):
                        output += payload[: max(0, EXEC_OUTPUT_LIMIT - len(output))]
                finally:
                    resp.close()
                while True:
                    _, info = await self._call_json("GET", f"exec/{exec_id}/json", what=what)
                    if not info.get("Running"):
                        return int(info.get("ExitCode") or 0), bytes(output)
                    await asyncio.sleep(0.02)
        except TimeoutError:
            await self._kill_exec(exec_id, what)
            raise ContainerRuntimeError(
                ErrorKind.TIMEOUT,
                f"{what}: did not finish within {timeout:g}s (killed); "
                f"output so far: {bytes(output[:200])!r}",
            ) from None

    async def _kill_exec(self, exec_id: str, what: str) -> None:
        """SIGKILL a timed-out exec process (Podman has no call for it; its host pid
        is in the exec session's inspect)."""
        try:
            _, info = await self._call_json("GET", f"exec/{exec_id}/json", what=what)
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
    ) -> int:
        """Run `command` in the container for a person (`katcall exec`): its output is
        passed to `on_output(stream, data)` as it comes (1 stdout, 2 stderr; with `tty`
        everything is 1), `stdin` is fed to it and closed when exhausted (none: closed at
        once). Returns the exit code. Cancelling kills the process in the container."""
        what = f"exec {list(command)} in {container_id}"
        _, created = await self._call_json(
            "POST",
            f"containers/{self._id(container_id)}/exec",
            what=what,
            body={
                "AttachStdin": True,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": tty,
                "Cmd": list(command),
            },
        )
        exec_id = quote(str(created["Id"]), safe="")
        resp: _Response | None = None
        feeder: asyncio.Task[None] | None = None
        try:
            resp = await self._request(
                "POST",
                f"exec/{exec_id}/start",
                what=what,
                body={"Detach": False, "Tty": tty},
                upgrade=True,
            )
            if resp.status not in (101, 200):
                raise _error(what, resp.status, await resp.error_message(), ErrorKind.OTHER)
            feeder = asyncio.create_task(_feed(resp.writer, stdin))
            if tty:
                async for chunk in resp.chunks():
                    await on_output(1, chunk)
            else:
                async for stream, payload in _frames(resp.chunks()):
                    await on_output(2 if stream == 2 else 1, payload)
            while True:
                _, info = await self._call_json("GET", f"exec/{exec_id}/json", what=what)
                if not info.get("Running"):
                    return int(info.get("ExitCode") or 0)
                await asyncio.sleep(0.02)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._kill_exec(exec_id, what))
            raise
        finally:
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(BaseException):
                    await feeder
            if resp is not None:
                resp.close()


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
