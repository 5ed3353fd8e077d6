"""Async facade over the etcd v3 API. With `etcd_endpoints` and `etcd_wire`, the
only modules that import `pyetcd`; the values and errors callers see live in
`etcd_values`.

Blocking gRPC calls run on this client's own thread pool, each with a deadline
(`timeout`), so a dead or quorum-less cluster shows up as `EtcdUnavailable`
after at most that long instead of a hang. Watches bridge pyetcd's watch thread
into an asyncio.Queue.

What we take from pyetcd and what we do ourselves: `pyetcd.Endpoint` (channel
and failure bookkeeping), its generated `etcdrpc` messages and stubs, and its
`Watcher` (one multiplexed watch stream per endpoint). Its high-level client is
bypassed: a single-endpoint `pyetcd.client()` refuses every call for 300 s
after one failure ("Trying to use a failed node"), its `transaction()` drops the
response header (so the new revision is lost) and its mapped exceptions drop
the server's message.

Failover between endpoints (which one a call goes to, which calls are retried
on the next) is `etcd_endpoints`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exc
from pyetcd.watch import Watcher

from internal.security.certfiles import pair_matches
from internal.state.etcd_cluster import ClusterCalls
from internal.state.etcd_endpoints import Endpoints
from internal.state.etcd_outcome import Outcome, decidable, outcome
from internal.state.etcd_values import (
    Compare,
    EtcdError,
    EtcdNoAnswer,
    EtcdUnavailable,
    Get,
    KeyValue,
    KVEvent,
    Lease,
    LeaseNotFound,
    OpResult,
    RangeResult,
    TxnOp,
    TxnResult,
    WatchCompacted,
    as_bytes,
    range_key,
)
from internal.state.etcd_wire import (
    WatchHandle,
    compare_msg,
    event_value,
    in_range,
    kv_value,
    op_msg,
    op_result,
    quiet_cancel,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_PAGE = 1000
_WATCH_RETRY_MIN = 0.1
_WATCH_RETRY_MAX = 2.0
# Put in a watch's queue when the channels were renewed: the watch moves to them.
_RENEWED = object()

# ---------------------------------------------------------------- client


class EtcdClient(ClusterCalls):
    """An async etcd client over one or several endpoints of one cluster.

    `ca_file` turns on TLS (verifying the server against that CA); `cert_file`
    and `key_file` add a client certificate (etcd runs with client-cert-auth).
    Use as `async with EtcdClient(...) as etcd:` or call `close()`.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        timeout: float = 5.0,
        retry_failed_after: float = 2.0,
        max_workers: int = 16,
        retire_after: float = 60.0,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if (cert_file is None) != (key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if ca_file is None and cert_file is not None:
            raise ValueError("a client certificate needs ca_file (TLS) too")
        self._files = (ca_file, cert_file, key_file)
        self._tls = self._read_tls()
        self.timeout = timeout
        self.retire_after = retire_after
        # Queues of the watches running now: told when the channels were renewed.
        self._watch_queues: set[asyncio.Queue[Any]] = set()
        self._pool = Endpoints(
            endpoints,
            creds=self._credentials(),
            timeout=timeout,
            retry_failed_after=retry_failed_after,
            max_workers=max_workers,
        )

    def _read_tls(self) -> tuple[bytes, bytes | None, bytes | None] | None:
        ca, cert, key = self._files
        if ca is None:
            return None
        read = lambda f: Path(f).read_bytes() if f is not None else None  # noqa: E731
        return Path(ca).read_bytes(), read(cert), read(key)

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if self._tls is None:
            return None
        ca, cert, key = self._tls
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def refresh_credentials(self) -> bool:
        """Take the certificate files again if they changed (a renewed client
        certificate): calls from now on, and every running watch (resumed from where it
        was, nothing missed or repeated), move to new channels that handshake with
        them. False if nothing changed, or the key on disk does not match the
        certificate (a renewal half written). Call it on the event loop's thread."""
        ca, cert, key = self._files
        if ca is None or self._pool.closed:
            return False
        if cert is not None and key is not None and not pair_matches(Path(cert), Path(key)):
            return False
        try:
            tls = self._read_tls()
        except OSError:
            return False
        if tls == self._tls:
            return False
        self._tls = tls
        creds = self._credentials()
        assert creds is not None
        self._pool.renew(creds, self.retire_after)
        for q in self._watch_queues:
            q.put_nowait(_RENEWED)
        return True

    @property
    def endpoints(self) -> list[str]:
        return self._pool.netlocs

    @property
    def current_endpoint(self) -> str:
        return self._pool.current

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------ key-value

    async def revision(self) -> int:
        """The current store revision."""
        req = etcdrpc.RangeRequest(key=b"\0", count_only=True)
        resp = await self._pool.run("read revision", lambda s: s.Range(req, self.timeout))
        return int(resp.header.revision)

    async def get(self, key: str) -> KeyValue | None:
        req = etcdrpc.RangeRequest(key=as_bytes(key))
        resp = await self._pool.run(f"get {key}", lambda s: s.Range(req, self.timeout))
        return kv_value(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(
        self, prefix: str, *, limit: int = 0, descending: bool = False, keys_only: bool = False
    ) -> RangeResult:
        """Every key under `prefix` in key order (or the first/last `limit`),
        read at one revision even when fetched in pages."""
        start, end = range_key(prefix, True)
        what = f"list {prefix}"
        if limit or descending:
            req = etcdrpc.RangeRequest(
                key=start,
                range_end=end,
                limit=limit,
                keys_only=keys_only,
                sort_target=etcdrpc.RangeRequest.KEY,
                sort_order=(
                    etcdrpc.RangeRequest.DESCEND if descending else etcdrpc.RangeRequest.ASCEND
                ),
            )
            resp = await self._pool.run(what, lambda s: s.Range(req, self.timeout))
            return RangeResult([kv_value(kv) for kv in resp.kvs], int(resp.header.revision))
        kvs: list[KeyValue] = []
        revision = 0
        while True:
            page = etcdrpc.RangeRequest(
                key=start, range_end=end, limit=_PAGE, revision=revision, keys_only=keys_only
            )
            resp = await self._pool.run(what, lambda s, r=page: s.Range(r, self.timeout))
            revision = revision or int(resp.header.revision)
            kvs.extend(kv_value(kv) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return RangeResult(kvs, revision)
            start = resp.kvs[-1].key + b"\0"

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Unconditional write; returns the new revision."""
        req = etcdrpc.PutRequest(key=as_bytes(key), value=value, lease=lease)
        resp = await self._pool.run(f"put {key}", lambda s: s.Put(req, self.timeout), retry=False)
        return int(resp.header.revision)

    async def delete(self, key: str) -> int:
        """Returns how many keys were deleted (0 or 1)."""
        req = etcdrpc.DeleteRangeRequest(key=as_bytes(key))
        resp = await self._pool.run(
            f"delete {key}", lambda s: s.DeleteRange(req, self.timeout), retry=False
        )
        return int(resp.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        start, end = range_key(prefix, True)
        req = etcdrpc.DeleteRangeRequest(key=start, range_end=end)
        resp = await self._pool.run(
            f"delete {prefix}*", lambda s: s.DeleteRange(req, self.timeout), retry=False
        )
        return int(resp.deleted)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """If every compare holds run `success`, else `failure`; atomically."""
        req = etcdrpc.TxnRequest(
            compare=[compare_msg(c) for c in compare],
            success=[op_msg(op) for op in success],
            failure=[op_msg(op) for op in failure],
        )
        read_only = all(isinstance(op, Get) for op in (*success, *failure))
        keys = ", ".join(dict.fromkeys(op.key for op in success)) or "-"
        what = f"transaction on {keys}"

        async def send(retry: bool) -> Any:
            return await self._pool.run(what, lambda s: s.Txn(req, self.timeout), retry=retry)

        try:
            resp = await send(read_only)
        except EtcdNoAnswer as exc:
            puts = decidable(success)  # None for a read-only one, which was sent again anyway
            if puts is None:
                raise
            found = await self._read_back([p.key for p in puts], exc)
            result = outcome(puts, found)
            log.warning("%s got no answer; read back: %s", what, result.value)
            if result is Outcome.APPLIED:
                revision = max(kv.mod_revision for kv in found.values() if kv is not None)
                return TxnResult(True, revision, [OpResult() for _ in puts])
            if result is Outcome.UNKNOWN:
                raise
            resp = await send(False)  # provably not applied: once more
        return TxnResult(
            bool(resp.succeeded),
            int(resp.header.revision),
            [op_result(r) for r in resp.responses],
        )

    async def _read_back(self, keys: list[str], error: EtcdNoAnswer) -> dict[str, KeyValue | None]:
        """The keys as a linearizable read sees them once etcd answers again (see
        etcd_outcome); `error` again when it does not within another timeout."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            try:
                result = await self.txn([], [Get(k) for k in keys])
            except EtcdUnavailable:
                if asyncio.get_running_loop().time() >= deadline:
                    raise error from None
                await asyncio.sleep(0.2)
                continue
            pairs = zip(keys, result.results, strict=True)
            return {k: (r.kvs[0] if r.kvs else None) for k, r in pairs}

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        req = etcdrpc.CompactionRequest(revision=revision, physical=physical)
        await self._pool.run("compact", lambda s: s.Compact(req, self.timeout), retry=False)

    # ------------------------------------------------------------ leases

    async def lease_grant(self, ttl: int) -> Lease:
        """A new lease; etcd may round `ttl` up to its minimum (about 1.5 x the
        election timeout)."""
        req = etcdrpc.LeaseGrantRequest(TTL=ttl)
        resp = await self._pool.run(
            "grant lease", lambda s: s.LeaseGrant(req, self.timeout), kind="lease", retry=False
        )
        if resp.error:
            raise EtcdError(f"grant lease: {resp.error}")
        return Lease(int(resp.ID), int(resp.TTL))

    async def lease_keepalive(self, lease_id: int, deadline: float | None = None) -> int:
        """Refresh the lease once; returns its TTL, or 0 when it no longer exists.
        `deadline`: seconds for the call (default: the client's timeout)."""
        limit = deadline or self.timeout

        def refresh(stub: Any) -> int:
            call = stub.LeaseKeepAlive(iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]), limit)
            try:
                for resp in call:
                    return int(resp.TTL)
                return 0
            finally:
                call.cancel()

        return await self._pool.run(
            f"keep lease {lease_id:x} alive", refresh, kind="lease", deadline=limit
        )

    async def lease_revoke(self, lease_id: int) -> bool:
        """Revoke the lease (deleting its keys); False if it was already gone."""
        req = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        try:
            await self._pool.run(
                f"revoke lease {lease_id:x}",
                lambda s: s.LeaseRevoke(req, self.timeout),
                kind="lease",
            )
        except LeaseNotFound:
            return False
        return True

    async def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL in seconds, -1 when the lease no longer exists."""
        req = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = await self._pool.run(
            f"lease {lease_id:x} ttl", lambda s: s.LeaseTimeToLive(req, self.timeout), kind="lease"
        )
        return int(resp.TTL)

    # ------------------------------------------------------------ watch

    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int | None = None
    ) -> AsyncIterator[list[KVEvent]]:
        """Batches of events on `key` (or every key under it with prefix=True)
        from `start_revision` on (default: from now).

        The watch survives a broken stream (etcd restart, endpoint failover): it
        is re-established from the revision after the last one delivered, so
        nothing is missed or repeated. If that revision has been compacted it
        raises WatchCompacted. Close it with `aclose()` (or `contextlib.aclosing`)
        or by cancelling the consuming task.
        """
        if start_revision is None:
            start_revision = await self.revision() + 1
        next_rev = start_revision
        start, end = range_key(key, prefix)
        loop = asyncio.get_running_loop()
        delay = _WATCH_RETRY_MIN
        what = f"watch {key}{'*' if prefix else ''}"
        while True:
            queue: asyncio.Queue[Any] = asyncio.Queue()

            def deliver(item: Any, q: asyncio.Queue[Any] = queue) -> None:
                # Runs on pyetcd's watch thread.
                try:
                    loop.call_soon_threadsafe(q.put_nowait, item)
                except RuntimeError:
                    pass  # our loop is closed: nobody is listening any more

            handle = WatchHandle()

            def create(w: Watcher, rev: int = next_rev, h: WatchHandle = handle) -> WatchHandle:
                wid = w.add_callback(
                    start,
                    deliver,
                    range_end=end or None,
                    start_revision=rev,
                    progress_notify=True,
                    prev_kv=True,
                )
                if not h.created(w, wid):
                    w.cancel(wid)
                return h

            # Registered before the watch exists: a renewal meanwhile is not missed.
            self._watch_queues.add(queue)
            try:
                await self._create_watch(what, create, handle)
            except EtcdUnavailable as exc:
                self._watch_queues.discard(queue)
                log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _WATCH_RETRY_MAX)
                continue
            except BaseException:
                self._watch_queues.discard(queue)
                raise
            watcher, watch_id = handle.watcher, handle.watch_id
            assert watcher is not None and watch_id is not None
            failure: Any = None
            renewed = False
            try:
                while failure is None:
                    item = await queue.get()
                    if item is _RENEWED:
                        renewed = True
                        break
                    if isinstance(item, BaseException):
                        failure = item
                        break
                    delay = _WATCH_RETRY_MIN
                    # Only events of our key range: pyetcd multiplexes every watch on one
                    # stream, and after a partition healed a resumed watch was seen getting
                    # another watch's events (a node's record on the leader key).
                    batch = [event_value(e) for e in item.events if in_range(e.key, start, end)]
                    if batch:
                        next_rev = max(e.revision for e in batch) + 1
                        yield batch
                    elif item.header.revision >= next_rev:
                        # A progress notification: nothing under the key up to here.
                        next_rev = item.header.revision + 1
            finally:
                self._watch_queues.discard(queue)
                if failure is None:  # closed by the consumer, or renewed: cancel on the server
                    await self._cancel_watch(watcher, watch_id)
            if renewed:
                # Events after the last one yielded come again on the new channels.
                log.debug("%s: moving to the renewed channels from revision %d", what, next_rev)
                continue
            if isinstance(failure, etcd_exc.RevisionCompactedError):
                raise WatchCompacted(failure.compacted_revision)
            if self._pool.closed:
                raise EtcdError("etcd client is closed")
            reason = failure
            idx = self._pool.index_of(watcher)
            if idx is None:  # a watch on channels retired since a renewal
                log.info("%s: moved to the renewed channels from revision %d", what, next_rev)
                continue
            if isinstance(failure, grpc.RpcError):
                reason = self._pool.translate(failure, what, idx)
            self._pool.mark_failed(idx)  # whatever broke the stream, resume elsewhere if we can
            log.warning(
                "%s: stream broke (%s); resuming from revision %d in %.1fs",
                what,
                reason,
                next_rev,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _WATCH_RETRY_MAX)

    async def _create_watch(
        self, what: str, create: Callable[[Watcher], WatchHandle], handle: WatchHandle
    ) -> None:
        try:
            await self._pool.run(what, create, kind="watch")
        except BaseException:
            # Cancelled or timed out while the worker thread may still create the
            # watch: make sure it does not live on unobserved.
            made = handle.abandon()
            if made is not None:
                with contextlib.suppress(RuntimeError):
                    self._pool.executor.submit(quiet_cancel, *made)
            raise

    async def _cancel_watch(self, watcher: Watcher, watch_id: int) -> None:
        if self._pool.closed:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._pool.executor, watcher.cancel, watch_id
            )
        except (RuntimeError, grpc.RpcError):
            pass  # the stream or the client is gone, and the watch with it
