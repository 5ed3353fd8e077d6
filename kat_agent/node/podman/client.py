"""A typed client of the Podman API on one unix socket (the libpod endpoints KAT uses).

Plain request/response calls go through the `podman` library (blocking: run in a thread).
Calls that stream or block for long (logs, exec, stop, wait) use a small asyncio HTTP/1.1
client on the same socket instead, so that they can be cancelled and time out without
leaving a thread behind. Every failure is raised as a ContainerRuntimeError with a kind.
This module knows Podman's URLs and documents; what they mean for KAT (labels, limits,
mounts, adoption) is kat_agent/node/podman/runtime.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from podman import PodmanClient
from podman.errors import APIError

from internal.observability import metrics
from kat_agent.node.podman.errors import (
    ContainerRuntimeError,
    ErrorKind,
    from_api_error,
    podman_error,
)

T = TypeVar("T")


def _q(name: str) -> str:
    return quote(name, safe="")


class Response:
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


async def frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
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


def tag_params(ref: str) -> dict[str, str]:
    """repo and tag of an image reference (the tag is "latest" when none is given)."""
    repo, tag = ref, "latest"
    last = ref.rsplit("/", 1)[-1]
    if ":" in last and "@" not in last:
        repo, tag = ref.rsplit(":", 1)
    return {"repo": repo, "tag": tag}


_PODMAN_VERBS = frozenset({"create", "start", "stop", "kill", "wait", "logs", "json", "exec"})


def podman_operation(method: str, path: str) -> str:
    """A bounded name for a Podman API request: "POST containers/start" for
    POST containers/<id>/start (ids and names left out)."""
    segs = path.strip("/").split("/")
    last = segs[-1] if len(segs) > 1 and segs[-1] in _PODMAN_VERBS else ""
    return f"{method} {segs[0]}/{last}" if last else f"{method} {segs[0]}"


class PodmanAPI:
    """The Podman API of one socket."""

    def __init__(self, socket_path: Path | str, *, api_timeout: float = 60.0) -> None:
        self.socket_path = Path(socket_path)
        self.lib = PodmanClient(base_url=f"unix://{self.socket_path}", timeout=api_timeout)
        self.prefix = self.lib.api.path_prefix  # "/v<version>/libpod/"

    async def close(self) -> None:
        await asyncio.to_thread(self.lib.close)

    # ------------------------------------------------------------ plumbing

    async def blocking(
        self, what: str, fn: Callable[[], T], default: ErrorKind = ErrorKind.OTHER
    ) -> T:
        try:
            with metrics.timed(metrics.PODMAN_SECONDS, operation=what.split(" ", 1)[0]):
                return await asyncio.to_thread(fn)
        except APIError as exc:
            raise from_api_error(what, exc, default) from exc

    async def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        upgrade: bool = False,
    ) -> Response:
        """One request on a connection of its own. `upgrade` asks Podman to hijack the
        connection (exec with stdin): after the answer it carries raw data both ways."""
        query = f"?{urlencode(params, doseq=True)}" if params else ""
        payload = b"" if body is None else json.dumps(body).encode()
        connection = "Upgrade\r\nUpgrade: tcp" if upgrade else "close"
        head = (
            f"{method} {self.prefix}{path}{query} HTTP/1.1\r\nHost: podman\r\n"
            f"Connection: {connection}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as exc:
            raise podman_error(
                what, None, f"Podman at {self.socket_path}: {exc}", ErrorKind.OTHER
            ) from exc
        try:
            writer.write(head.encode() + payload)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise podman_error(what, None, f"bad HTTP answer {status_line!r}", ErrorKind.OTHER)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
        except OSError as exc:
            writer.close()
            raise podman_error(
                what, None, f"Podman at {self.socket_path}: {exc}", ErrorKind.OTHER
            ) from exc
        except BaseException:
            writer.close()
            raise
        op = podman_operation(method, path)
        if not op.endswith("/wait"):  # a wait answers when the container exits
            metrics.PODMAN_SECONDS.labels(op).observe(time.perf_counter() - started)
        return Response(int(parts[1]), headers, reader, writer)

    async def call_json(
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
        resp = await self.request(method, path, what=what, params=params, body=body)
        try:
            if resp.status not in ok:
                raise podman_error(what, resp.status, await resp.error_message(), default)
            return resp.status, await resp.json()
        finally:
            resp.close()

    # ------------------------------------------------------------ system and images

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.to_thread(self.lib.ping))
        except (APIError, OSError):
            return False

    async def image_exists(self, ref: str) -> bool:
        return await self.blocking(f"image {ref}", lambda: self.lib.images.exists(ref))

    async def pull_image(self, ref: str) -> str | None:
        """Pull `ref` when missing; the error Podman reported in its progress stream, if any."""

        def pull() -> str | None:
            resp = self.lib.api.post(
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

        return await self.blocking(f"image {ref}", pull, ErrorKind.IMAGE_NOT_FOUND)

    async def import_image(self, tarball: Path, reference: str, changes: Sequence[str] = ()) -> str:
        """`podman import`: make image `reference` from a root filesystem tarball."""

        def run() -> str:
            with open(tarball, "rb") as f:
                resp = self.lib.api.post(
                    "/images/import",
                    params={"reference": reference, "changes": list(changes)},
                    data=f,
                    headers={"Content-Type": "application/x-tar"},
                )
            resp.raise_for_status()
            return str(resp.json()["Id"])

        try:
            return await self.blocking(f"import {tarball} as {reference}", run)
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.OTHER, f"import {tarball}: {exc}") from exc

    async def save_image(self, ref: str, dest: Path) -> None:
        """Write image `ref` to `dest` as an OCI archive."""

        def run() -> None:
            resp = self.lib.api.get(
                f"/images/{_q(ref)}/get", params={"format": "oci-archive"}, stream=True
            )
            resp.raise_for_status()
            with open(dest, "wb") as f:
                for chunk in resp.iter_content(1 << 20):
                    f.write(chunk)

        try:
            await self.blocking(f"save image {ref}", run, ErrorKind.IMAGE_NOT_FOUND)
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.OTHER, f"save image {ref}: {exc}") from exc

    async def load_image(self, src: Path, what: str) -> list[str]:
        """Load an image archive; the names Podman gave the loaded image."""

        def run() -> list[str]:
            with open(src, "rb") as f:
                resp = self.lib.api.post(
                    "/images/load", data=f, headers={"Content-Type": "application/x-tar"}
                )
            resp.raise_for_status()
            body = resp.json() if resp.content.strip() else {}
            return [str(n) for n in (body.get("Names") or [])] if isinstance(body, dict) else []

        try:
            return await self.blocking(what, run)
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.OTHER, f"{what}: {exc}") from exc

    async def tag_image(self, name: str, ref: str) -> None:
        await self.call_json(
            "POST",
            f"images/{_q(name)}/tag",
            what=f"tag {name} as {ref}",
            params=tag_params(ref),
            ok=(200, 201),
        )

    # ------------------------------------------------------------ networks

    async def network_inspect(self, name: str) -> dict[str, Any] | None:
        """The network's document, None when there is no such network."""
        status, found = await self.call_json(
            "GET", f"networks/{_q(name)}/json", what=f"network {name}", ok=(200, 404)
        )
        return found if status == 200 and isinstance(found, dict) else None

    async def network_users(self, name: str) -> list[Any]:
        """The containers (any state) attached to network `name`."""
        _, users = await self.call_json(
            "GET",
            "containers/json",
            what=f"network {name}",
            params={"all": "true", "filters": json.dumps({"network": [name]})},
        )
        return list(users or [])

    async def network_delete(self, name: str) -> None:
        await self.call_json(
            "DELETE", f"networks/{_q(name)}", what=f"network {name}", ok=(200, 204, 404)
        )

    async def network_create(self, body: Mapping[str, Any]) -> None:
        """Create a network; one made meanwhile (409, by another agent of this storage) is fine."""
        await self.call_json(
            "POST",
            "networks/create",
            what=f"network {body.get('name')}",
            body=dict(body),
            ok=(200, 201, 409),
        )

    # ------------------------------------------------------------ containers

    async def container_create(self, body: Mapping[str, Any], what: str) -> dict[str, Any]:
        _, data = await self.call_json("POST", "containers/create", what=what, body=dict(body))
        return dict(data or {})

    async def container_start(self, container_id: str) -> None:
        await self.call_json(
            "POST", f"containers/{_q(container_id)}/start", what=f"start {container_id}"
        )

    async def container_inspect(self, container_id: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            resp = self.lib.api.get(f"/containers/{_q(container_id)}/json")
            resp.raise_for_status()
            return dict(resp.json())

        return await self.blocking(f"inspect {container_id}", run)

    async def container_inspect_all(self, label: str) -> list[dict[str, Any]]:
        """The inspect documents of every container (any state) carrying `label`
        ("key=value"); one removed while listing is left out."""

        def run() -> list[dict[str, Any]]:
            found = self.lib.containers.list(all=True, filters={"label": label})
            out = []
            for c in found:
                resp = self.lib.api.get(f"/containers/{c.id}/json")
                if resp.status_code == 404:  # removed meanwhile
                    continue
                resp.raise_for_status()
                out.append(dict(resp.json()))
            return out

        return await self.blocking("list managed containers", run)

    async def container_wait(self, container_id: str) -> int:
        _, data = await self.call_json(
            "POST",
            f"containers/{_q(container_id)}/wait",
            what=f"wait for {container_id}",
            ok=(200,),
        )
        return int(data)

    async def container_stop(self, container_id: str, grace: int) -> None:
        await self.call_json(
            "POST",
            f"containers/{_q(container_id)}/stop",
            what=f"stop {container_id}",
            params={"timeout": grace},
        )

    async def container_kill(self, container_id: str, sig: str) -> None:
        await self.call_json(
            "POST",
            f"containers/{_q(container_id)}/kill",
            what=f"kill {container_id}",
            params={"signal": sig},
        )

    async def container_remove(self, container_id: str, params: Mapping[str, Any]) -> None:
        """Remove the container; gone already is fine."""

        def run() -> None:
            resp = self.lib.api.delete(f"/containers/{_q(container_id)}", params=dict(params))
            if resp.status_code != 404:
                resp.raise_for_status()

        await self.blocking(f"remove {container_id}", run)

    async def container_logs(self, container_id: str, params: Mapping[str, str]) -> Response:
        """The multiplexed log stream (see `frames`); the caller closes it."""
        what = f"logs of {container_id}"
        resp = await self.request(
            "GET", f"containers/{_q(container_id)}/logs", what=what, params=params
        )
        if resp.status != 200:
            try:
                raise podman_error(what, resp.status, await resp.error_message(), ErrorKind.OTHER)
            finally:
                resp.close()
        return resp

    async def container_stats(self, container_ids: Sequence[str]) -> list[dict[str, Any]]:
        """One stats sample (libpod format: CPUNano, SystemNano, MemUsage, ...) of each
        container; gone or stopped ones are left out."""
        params = {"containers": list(container_ids), "stream": "false"}
        _, data = await self.call_json(
            "GET", "containers/stats", what="container stats", params=params
        )
        return [s for s in (data or {}).get("Stats") or [] if isinstance(s, dict)]

    # ------------------------------------------------------------ exec

    async def exec_create(self, container_id: str, body: Mapping[str, Any], what: str) -> str:
        """An exec session in the container; its id (quoted for URLs)."""
        _, created = await self.call_json(
            "POST", f"containers/{_q(container_id)}/exec", what=what, body=dict(body)
        )
        return _q(str(created["Id"]))

    async def exec_start(
        self, exec_id: str, body: Mapping[str, Any], what: str, *, upgrade: bool = False
    ) -> Response:
        """Start the session and attach to it; the caller closes the answer."""
        resp = await self.request(
            "POST", f"exec/{exec_id}/start", what=what, body=dict(body), upgrade=upgrade
        )
        if resp.status not in ((101, 200) if upgrade else (200,)):
            try:
                raise podman_error(what, resp.status, await resp.error_message(), ErrorKind.OTHER)
            finally:
                resp.close()
        return resp

    async def exec_resize(self, exec_id: str, rows: int, cols: int, what: str) -> None:
        """Set the terminal size of a session started with Tty."""
        resp = await self.request(
            "POST", f"exec/{exec_id}/resize", what=what, params={"h": rows, "w": cols}
        )
        resp.close()

    async def exec_inspect(self, exec_id: str, what: str) -> dict[str, Any]:
        _, info = await self.call_json("GET", f"exec/{exec_id}/json", what=what)
        return dict(info or {})
