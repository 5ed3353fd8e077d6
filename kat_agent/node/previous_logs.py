"""`katcall logs --previous`: the output of an instance's container before its last restart.

KAT replaces a container to restart it (stop, remove, create), so Podman forgets the old
one's logs. Just before removing a container it restarts, the node copies that container's
log (stdout and stderr apart, each line with Podman's timestamp, the newest MAX_BYTES) to
`<data-dir>/agent/previous-logs/<instance>.log`; the next restart overwrites it and the
file goes with the instance. Reading it honours tail, since and timestamps as Podman does.

File format: records of (1 byte stream: 1 stdout, 2 stderr; 4 bytes big-endian length;
one line, with its RFC 3339 time in front and its newline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import struct
from collections import deque
from collections.abc import Container, Iterator
from datetime import datetime
from pathlib import Path

from internal.host.files import write_atomic
from kat_agent.node.podman.errors import ContainerRuntimeError
from kat_agent.node.podman.runtime import ContainerRuntime

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20  # kept per instance (the newest lines)
_HEAD = struct.Struct(">BI")


def _lines(stream: int, data: bytes) -> Iterator[tuple[int, bytes]]:
    for line in data.splitlines(keepends=True):
        yield stream, line if line.endswith(b"\n") else line + b"\n"


_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?")


def _time_of(line: bytes) -> float | None:
    """The unix time of a line's RFC 3339 prefix (nanoseconds allowed), None without one."""
    m = _STAMP.match(line)
    if m is None:
        return None
    zone = (m[3] or b"Z").decode().replace("Z", "+00:00")
    frac = (m[2] or b"0")[:6].decode()
    try:
        return datetime.fromisoformat(f"{m[1].decode()}.{frac.ljust(6, '0')}{zone}").timestamp()
    except ValueError:
        return None


class PreviousLogs:
    """`live` holds the node's instance ids: a save also removes the files of instances no
    longer there (gone while the agent was down, so never forgotten one by one)."""

    def __init__(self, directory: Path, live: Container[str] = ()) -> None:
        self.dir = directory
        self.live = live

    def path(self, instance_id: str) -> Path:
        return self.dir / f"{instance_id}.log"

    async def save(self, runtime: ContainerRuntime, container_id: str, instance_id: str) -> None:
        """Copy the container's log; a failure loses only this copy (logged)."""
        kept: deque[tuple[int, bytes]] = deque()
        size = 0
        try:
            async for stream, data in runtime.log_frames(container_id, timestamps=True):
                for item in _lines(stream, data):
                    kept.append(item)
                    size += len(item[1]) + _HEAD.size
                    while size > MAX_BYTES and kept:
                        size -= len(kept.popleft()[1]) + _HEAD.size
        except ContainerRuntimeError as exc:
            log.warning("instance %s: previous container's log not kept: %s", instance_id, exc)
            return
        body = b"".join(_HEAD.pack(s, len(line)) + line for s, line in kept)
        await asyncio.to_thread(self._write, instance_id, body)

    def _write(self, instance_id: str, body: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path(instance_id), body, mode=0o600)
        for old in self.dir.glob("*.log"):
            if old.stem != instance_id and old.stem not in self.live:
                self.drop(old.stem)

    def drop(self, instance_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(instance_id))

    def read(
        self,
        instance_id: str,
        *,
        tail: int | None = None,
        since: float | None = None,
        timestamps: bool = False,
    ) -> list[tuple[int, bytes]] | None:
        """The kept lines as (stream, line); None when no earlier container was kept."""
        try:
            body = self.path(instance_id).read_bytes()
        except FileNotFoundError:
            return None
        out: list[tuple[int, bytes]] = []
        at = 0
        while at + _HEAD.size <= len(body):
            stream, length = _HEAD.unpack_from(body, at)
            at += _HEAD.size
            line = body[at : at + length]
            at += length
            if since is not None:
                when = _time_of(line)
                if when is not None and when < since:
                    continue
            out.append((stream, line if timestamps else line.split(b" ", 1)[-1]))
        return out[-tail:] if tail else out
