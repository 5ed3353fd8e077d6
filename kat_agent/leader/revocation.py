"""Certificates that must stop working now: revoked admins (checked on every call,
from a set kept current by an etcd watch, so a check costs one set lookup) and the
open streams of removed nodes (cut with PERMISSION_DENIED the moment the node goes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import grpc

from internal.state.etcd_values import EtcdError
from internal.state.kv import Compacted, EventType
from internal.state.store import Store

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


class Revocations:
    """The hashes of revoked certificates (/kat/pki/revoked/), followed by a watch."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._revoked: set[str] = set()
        self.loaded = asyncio.Event()

    def is_revoked(self, certificate_sha256: str) -> bool:
        return certificate_sha256 in self._revoked

    def add(self, certificate_sha256: str) -> None:
        """Effective at once on this member (the watch brings it to the others)."""
        self._revoked.add(certificate_sha256)

    async def run(self) -> None:
        """Reconcile loop: list, then watch from the listed revision; again from a fresh
        list after a compaction or an etcd failure (revocations are never undone, so a
        set that only grows between lists is never wrong)."""
        while True:
            try:
                items, revision = await self._store.list_revocations()
                self._revoked = {r.certificate_sha256 for r in items}
                self.loaded.set()
                async for ev in self._store.watch_revocations(revision + 1):
                    if ev.type == EventType.PUT and ev.msg is not None:
                        self._revoked.add(ev.msg.certificate_sha256)
            except (Compacted, EtcdError) as exc:
                log.warning("revocation watch restarts: %s", exc)
            await asyncio.sleep(RETRY_SECONDS)

    async def check(self, context: grpc.aio.ServicerContext, certificate_sha256: str) -> None:
        """Abort the call if its certificate is revoked (or, fail closed, if the list
        was never read)."""
        if not self.loaded.is_set():
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "certificate revocations not loaded yet; retry"
            )
        if certificate_sha256 in self._revoked:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this certificate is revoked")


class StreamCutter:
    """The open streams of each node, to end them when the node is removed."""

    def __init__(self) -> None:
        self._open: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def opened(self, node: str) -> Iterator[asyncio.Event]:
        cut = asyncio.Event()
        self._open.setdefault(node, set()).add(cut)
        try:
            yield cut
        finally:
            streams = self._open.get(node)
            if streams is not None:
                streams.discard(cut)
                if not streams:
                    del self._open[node]

    def cut(self, node: str) -> None:
        for event in self._open.get(node, ()):
            event.set()

    def count(self, node: str) -> int:
        return len(self._open.get(node, ()))


class StreamCut(Exception):
    """The stream's node was removed while it was open."""


async def until_cut(items: AsyncIterator[object], cut: asyncio.Event) -> AsyncIterator[object]:
    """`items` until they end or `cut` is set (then StreamCut, after closing `items`).
    Holds no item while waiting for the next one.

    A cut that comes while `items` is waiting for its next item cancels the consuming
    task there (one watcher per stream, not a task and an asyncio.wait per item: with
    1,000 streams that was a fifth of the cost of sending a message); a cut that comes
    while the item is being sent is seen before the next one is asked for."""
    task = asyncio.current_task()
    assert task is not None
    waiting = False
    cut_it = False

    def on_cut(_: object) -> None:  # once: the watcher ends only when cut is set
        nonlocal cut_it
        if waiting:
            cut_it = True
            task.cancel()

    watcher = asyncio.ensure_future(cut.wait())
    watcher.add_done_callback(on_cut)
    it = aiter(items)
    try:
        while True:
            if cut.is_set():
                raise StreamCut
            waiting = True
            try:
                item = await anext(it)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                # ours (the cut) unless the task was also cancelled from elsewhere
                if cut_it and task.uncancel() == 0:
                    raise StreamCut from None
                raise
            finally:
                waiting = False
            # Nothing here keeps the item once it is passed on: a long-lived stream's last
            # message (a full snapshot lists every peer) would stay alive, per stream,
            # while waiting for the next one.
            yield item
            del item
    finally:
        watcher.remove_done_callback(on_cut)
        watcher.cancel()
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):
                await aclose()
