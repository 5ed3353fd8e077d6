"""What a node's network parts do when the node leaves the cluster (it was removed:
the leader's peer list no longer names it): the instance veths, the `kat0` bridge the
agent made for rootless instances (and with them their routes), the nftables table and
the ingress keys go; the WireGuard interface goes with the overlay (manager.py).

A marker file (<data-dir>/agent/left-cluster) keeps a restarted agent of a removed node
from making them again; a node that joins again starts with a new agent/ directory. Until
then every part is re-made idempotently on restart (each adopts what is already there).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from internal.host.files import write_private

log = logging.getLogger(__name__)


class Departure:
    """Set once this node has left the cluster; remembered across restarts."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.left = asyncio.Event()
        if marker.exists():
            self.left.set()

    def leave(self) -> None:
        if self.left.is_set():
            return
        self.left.set()
        try:
            write_private(self.marker, b"this node was removed from its cluster\n")
        except OSError as exc:
            log.warning("cannot write %s: %s", self.marker, exc)


async def until_left(
    departure: Departure,
    run: Callable[[], Awaitable[None]],
    cleanup: Callable[[], Awaitable[None]],
    what: str,
) -> None:
    """Run `run` until the node leaves the cluster, then stop it and run `cleanup`."""
    if not departure.left.is_set():
        task = asyncio.ensure_future(run())
        waiter = asyncio.ensure_future(departure.left.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, waiter):
                t.cancel()
            await asyncio.gather(task, waiter, return_exceptions=True)
        if not departure.left.is_set():
            return  # `run` ended on its own (supervised parts do not): nothing to undo
    try:
        await cleanup()
        log.info("left the cluster: %s removed", what)
    except Exception as exc:  # noqa: BLE001 - the rest of the cleanup still runs
        log.error("left the cluster, but removing %s failed: %s", what, exc)
