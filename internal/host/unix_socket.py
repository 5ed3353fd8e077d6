"""One request and its answer on a local unix socket (Podman's API, HAProxy's CLIs)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await reader.read()


async def exchange(
    socket_path: Path,
    request: bytes,
    max_seconds: float,
    read: Callable[[asyncio.StreamReader], Awaitable[bytes]] = _read_all,
) -> bytes | None:
    """Send `request` on a connection of its own and return what `read` takes of the
    answer (by default all of it, until the other side closes); None when nothing
    listens there (yet) or it does not answer within `max_seconds`."""
    try:
        async with asyncio.timeout(max_seconds):
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            try:
                writer.write(request)
                await writer.drain()
                return await read(reader)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
