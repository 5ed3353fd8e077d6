"""Async facade over the etcd v3 API; the only module that imports `pyetcd`.

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

Failover: calls go to the current endpoint; an endpoint that answers UNAVAILABLE
or misses a deadline is skipped for `retry_failed_after` seconds; when every
endpoint has failed recently all are tried again. Reads (and get-only
transactions) are retried on the next endpoint within the same call; writes are
not, because a write that timed out may still have been applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import events as etcd_events
from pyetcd import exceptions as etcd_exc
from pyetcd.watch import Watcher

from internal.observability import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

_PAGE = 1000
_WATCH_RETRY_MIN = 0.1
_WATCH_RETRY_MAX = 2.0

_GRPC_OPTIONS = [
    # Detect a dead peer under a long-lived watch. etcd refuses pings on idle
    # connections (PermitWithoutStream=false) and closer than 5 s apart.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Reconnect promptly after an etcd restart (gRPC's default backs off to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.use_local_subchannel_pool", 1),
]
# Makes etcd end a watch when its member loses the raft leader, instead of
# leaving it silently stalled on a partitioned member.
_WATCH_METADATA = (("hasleader", "true"),)


class EtcdError(Exception):
    """An etcd call failed for a reason other than reachability."""


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered in time: down, unreachable, or no quorum."""


class LeaseNotFound(EtcdError):
    """The lease has expired or was revoked."""


class WatchCompacted(EtcdError):
    """The watch's start revision is older than etcd's history: re-list, then
    watch again from the listed revision + 1."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(
            f"watch history before revision {compact_revision} was compacted; "
            "re-list and watch again"
        )
        self.compact_revision = compact_revision


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # the store revision the range was read at


CompareTarget = Literal["version", "create", "mod", "value", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True)
class Compare:
    """One transaction guard. A key that does not exist has version, create and
    mod revision 0, so `Compare.absent(key)` is create == 0."""

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes

    @staticmethod
    def absent(key: str) -> Compare:
        return Compare(key, "create", "==", 0)

    @staticmethod
    def mod_revision(key: str, revision: int) -> Compare:
        return Compare(key, "mod", "==", revision)

    @staticmethod
    def create_revision(key: str, revision: int) -> Compare:
        return Compare(key, "create", "==", revision)

    @staticmethod
    def version(key: str, version: int) -> Compare:
        return Compare(key, "version", "==", version)

    @staticmethod
    def value_is(key: str, value: bytes) -> Compare:
        return Compare(key, "value", "==", value)

    @staticmethod
    def lease_is(key: str, lease_id: int) -> Compare:
        return Compare(key, "lease", "==", lease_id)


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Get:
    key: str
    prefix: bool = False


TxnOp = Put | Delete | Get


@dataclass(frozen=True)
class OpResult:
    kvs: list[KeyValue] = field(default_factory=list)  # for Get
    deleted: int = 0  # for Delete


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store revision after the transaction
    results: list[OpResult]  # one per op of the branch that ran


@dataclass(frozen=True)
class KVEvent:
    type: Literal["put", "delete"]
    kv: KeyValue  # for a delete: key and mod_revision (the delete's revision)
    prev: KeyValue | None  # the value before this event, when etcd still had it

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True)
class Member:
    id: int
    name: str  # empty for a member added but not yet started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]


@dataclass(frozen=True)
class EtcdStatus:
    endpoint: str
    member_id: int
    leader_id: int  # 0: this member sees no leader
    version: str
    db_size: int
    raft_index: int
    raft_term: int
    revision: int

    @property
    def has_leader(self) -> bool:
        return self.leader_id != 0


# ---------------------------------------------------------------- helpers


def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode()


def prefix_end(prefix: str | bytes) -> bytes:
    """The range end covering every key that starts with `prefix`."""
    raw = bytearray(_b(prefix))
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # empty prefix (or all 0xff): to the end of the keyspace


def _range_key(key: str, prefix: bool) -> tuple[bytes, bytes]:
    start = _b(key) or b"\0"
    return start, (prefix_end(key) if prefix else b"")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """ "https://10.0.0.1:2379", "10.0.0.1:2379" or "[::1]:2379" -> (host, port)."""
    parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"etcd endpoint {endpoint!r} needs a host and a port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host, parts.port


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        key=kv.key.decode(),
        value=kv.value,
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
        version=kv.version,
        lease=kv.lease,
    )


_RESULTS = {
    "==": etcdrpc.Compare.EQUAL,
    "!=": etcdrpc.Compare.NOT_EQUAL,
    "<": etcdrpc.Compare.LESS,
    ">": etcdrpc.Compare.GREATER,
}
_TARGETS = {
    "version": (etcdrpc.Compare.VERSION, "version"),
    "create": (etcdrpc.Compare.CREATE, "create_revision"),
    "mod": (etcdrpc.Compare.MOD, "mod_revision"),
    "value": (etcdrpc.Compare.VALUE, "value"),
    "lease": (etcdrpc.Compare.LEASE, "lease"),
}


def _compare_msg(c: Compare) -> Any:
    target, fieldname = _TARGETS[c.target]
    msg = etcdrpc.Compare(key=_b(c.key), result=_RESULTS[c.op], target=target)
    if c.target == "value":
        msg.value = _b(c.value) if isinstance(c.value, str | bytes) else str(c.value).encode()
    else:
        setattr(msg, fieldname, int(c.value))
    return msg


def _op_msg(op: TxnOp) -> Any:
    if isinstance(op, Put):
        return etcdrpc.RequestOp(
            request_put=etcdrpc.PutRequest(key=_b(op.key), value=op.value, lease=op.lease)
        )
    start, end = _range_key(op.key, op.prefix)
    if isinstance(op, Delete):
        return etcdrpc.RequestOp(
            request_delete_range=etcdrpc.DeleteRangeRequest(key=start, range_end=end)
        )
    return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=start, range_end=end))


def _op_result(resp: Any) -> OpResult:
    kind = resp.WhichOneof("response")
    if kind == "response_range":
        return OpResult(kvs=[_kv(kv) for kv in resp.response_range.kvs])
    if kind == "response_delete_range":
        return OpResult(deleted=resp.response_delete_range.deleted)
    return OpResult()


def _member(m: Any) -> Member:
    return Member(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs))


def _event(ev: Any) -> KVEvent:
    kind: Literal["put", "delete"] = "delete" if isinstance(ev, etcd_events.DeleteEvent) else "put"
    kv = KeyValue(
        key=ev.key.decode(),
        value=ev.value,
        mod_revision=ev.mod_revision,
        create_revision=ev.create_revision,
        version=ev.version,
        lease=ev.lease,
    )
    prev = None
    if ev.prev_key:  # an empty prev_kv when etcd had none to send
        prev = KeyValue(
            key=ev.prev_key.decode(),
            value=ev.prev_value,
            mod_revision=ev.prev_mod_revision,
            create_revision=ev.prev_create_revision,
            version=ev.prev_version,
            lease=ev.prev_lease,
        )
    return KVEvent(kind, kv, prev)


class _WatchHandle:
    """Records a watch created on a worker thread, so that a caller that gave up
    waiting (cancelled, timed out) can still cancel it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self.watcher: Watcher | None = None
        self.watch_id: int | None = None

    def created(self, watcher: Watcher, watch_id: int) -> bool:
        """Worker side; False means the caller is gone and the watch must go."""
        with self._lock:
            if self._abandoned:
                return False
            self.watcher, self.watch_id = watcher, watch_id
            return True

    def abandon(self) -> tuple[Watcher, int] | None:
        with self._lock:
            self._abandoned = True
            if self.watcher is None or self.watch_id is None:
                return None
            return self.watcher, self.watch_id


def _quiet_cancel(watcher: Watcher, watch_id: int) -> None:
    with contextlib.suppress(Exception):
        watcher.cancel(watch_id)


_STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "kv": etcdrpc.KVStub,
    "lease": etcdrpc.LeaseStub,
    "cluster": etcdrpc.ClusterStub,
    "maintenance": etcdrpc.MaintenanceStub,
}


# ---------------------------------------------------------------- client


class EtcdClient:
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
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if (cert_file is None) != (key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        creds = None
        if ca_file is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(ca_file).read_bytes(),
                private_key=Path(key_file).read_bytes() if key_file else None,
                certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
            )
        elif cert_file is not None:
            raise ValueError("a client certificate needs ca_file (TLS) too")
        self.timeout = timeout
        self._endpoints = [
            pyetcd.Endpoint(
                host,
                port,
                secure=creds is not None,
                creds=creds,
                time_retry=retry_failed_after,
                opts=_GRPC_OPTIONS,
            )
            for host, port in map(parse_endpoint, endpoints)
        ]
        self._current = 0
        self._lock = threading.Lock()
        self._stubs: dict[tuple[int, str], Any] = {}
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="etcd")

    @property
    def endpoints(self) -> list[str]:
        return [ep.netloc for ep in self._endpoints]

    @property
    def current_endpoint(self) -> str:
        return self._endpoints[self._current].netloc

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watchers = [w for (_, kind), w in self._stubs.items() if kind == "watch"]
        for w in watchers:
            w.close()
        for ep in self._endpoints:
            ep.close()  # also ends running calls and watch streams at once
        # Queued calls still run and fail with "closed" rather than vanish as cancelled.
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------ plumbing

    def _choose_locked(self) -> int:
        eps = self._endpoints
        if not eps[self._current].is_failed():
            return self._current
        for i, ep in enumerate(eps):
            if not ep.is_failed():
                self._current = i
                return i
        # Every endpoint failed recently: try them again, moving on by one.
        for ep in eps:
            ep.last_failed = 0
        self._current = (self._current + 1) % len(eps)
        return self._current

    def _stub(self, kind: str) -> tuple[int, Any]:
        with self._lock:
            if self._closed:
                raise EtcdError("etcd client is closed")
            idx = self._choose_locked()
            stub = self._stubs.get((idx, kind))
            if stub is None:
                channel = self._endpoints[idx].channel
                if kind == "watch":
                    stub = Watcher(
                        etcdrpc.WatchStub(channel), timeout=self.timeout, metadata=_WATCH_METADATA
                    )
                else:
                    stub = _STUBS[kind](channel)
                self._stubs[(idx, kind)] = stub
            return idx, stub

    def _index_of(self, stub: Any) -> int:
        with self._lock:
            return next((i for (i, _), s in self._stubs.items() if s is stub), self._current)

    def _mark_failed(self, idx: int) -> None:
        with self._lock:
            self._endpoints[idx].fail()

    def _translate(self, exc: grpc.RpcError, what: str, idx: int) -> EtcdError:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details() or code.name  # type: ignore[attr-defined]
        where = self._endpoints[idx].netloc
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self._mark_failed(idx)
            return EtcdUnavailable(
                f"etcd at {where} gave no answer to {what} within {self.timeout:g}s "
                "(down, unreachable, or no quorum)"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            self._mark_failed(idx)
            return EtcdUnavailable(f"etcd at {where} is unavailable ({what}): {details}")
        if code == grpc.StatusCode.CANCELLED and self._closed:
            return EtcdError("etcd client is closed")
        if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
            return LeaseNotFound(f"{what}: {details}")
        return EtcdError(f"etcd {what} failed: {code.name}: {details}")

    def _call(self, what: str, kind: str, fn: Callable[[Any], T], attempts: int) -> T:
        error: EtcdError | None = None
        for _ in range(attempts):
            idx, stub = self._stub(kind)
            try:
                return fn(stub)
            except grpc.RpcError as exc:
                error = self._translate(exc, what, idx)
            except etcd_exc.RevisionCompactedError as exc:
                raise WatchCompacted(exc.compacted_revision) from None
            except etcd_exc.WatchTimedOut:
                self._mark_failed(idx)
                error = EtcdUnavailable(
                    f"etcd at {self._endpoints[idx].netloc} did not create the watch ({what}) "
                    f"within {self.timeout:g}s"
                )
            if not isinstance(error, EtcdUnavailable):
                raise error
        assert error is not None
        raise error

    async def _run(
        self,
        what: str,
        fn: Callable[[Any], T],
        *,
        kind: str = "kv",
        retry: bool = True,
        deadline: float | None = None,
    ) -> T:
        attempts = len(self._endpoints) if retry else 1
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(self._executor, self._call, what, kind, fn, attempts)
        except RuntimeError:
            raise EtcdError("etcd client is closed") from None
        # A safety net only: every gRPC call carries its own deadline.
        limit = (deadline or self.timeout) * attempts + 1.0
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        # that arrives as the call completes, leaving the caller running on.
        op = metrics.etcd_operation(what)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                return await fut
        except TimeoutError:
            metrics.ETCD_ERRORS.labels(op).inc()
            raise EtcdUnavailable(f"etcd gave no answer to {what} within {limit:g}s") from None
        except EtcdError:
            metrics.ETCD_ERRORS.labels(op).inc()
            raise
        finally:
            metrics.ETCD_SECONDS.labels(op).observe(time.perf_counter() - start)

    # ------------------------------------------------------------ key-value

    async def revision(self) -> int:
        """The current store revision."""
        req = etcdrpc.RangeRequest(key=b"\0", count_only=True)
        resp = await self._run("read revision", lambda s: s.Range(req, self.timeout))
        return int(resp.header.revision)

    async def get(self, key: str) -> KeyValue | None:
        req = etcdrpc.RangeRequest(key=_b(key))
        resp = await self._run(f"get {key}", lambda s: s.Range(req, self.timeout))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(
        self, prefix: str, *, limit: int = 0, descending: bool = False, keys_only: bool = False
    ) -> RangeResult:
        """Every key under `prefix` in key order (or the first/last `limit`),
        read at one revision even when fetched in pages."""
        start, end = _range_key(prefix, True)
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
            resp = await self._run(what, lambda s: s.Range(req, self.timeout))
            return RangeResult([_kv(kv) for kv in resp.kvs], int(resp.header.revision))
        kvs: list[KeyValue] = []
        revision = 0
        while True:
            page = etcdrpc.RangeRequest(
                key=start, range_end=end, limit=_PAGE, revision=revision, keys_only=keys_only
            )
            resp = await self._run(what, lambda s, r=page: s.Range(r, self.timeout))
            revision = revision or int(resp.header.revision)
            kvs.extend(_kv(kv) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return RangeResult(kvs, revision)
            start = resp.kvs[-1].key + b"\0"

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Unconditional write; returns the new revision."""
        req = etcdrpc.PutRequest(key=_b(key), value=value, lease=lease)
        resp = await self._run(f"put {key}", lambda s: s.Put(req, self.timeout), retry=False)
        return int(resp.header.revision)

    async def delete(self, key: str) -> int:
        """Returns how many keys were deleted (0 or 1)."""
        req = etcdrpc.DeleteRangeRequest(key=_b(key))
        resp = await self._run(
            f"delete {key}", lambda s: s.DeleteRange(req, self.timeout), retry=False
        )
        return int(resp.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        start, end = _range_key(prefix, True)
        req = etcdrpc.DeleteRangeRequest(key=start, range_end=end)
        resp = await self._run(
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
            compare=[_compare_msg(c) for c in compare],
            success=[_op_msg(op) for op in success],
            failure=[_op_msg(op) for op in failure],
        )
        read_only = all(isinstance(op, Get) for op in (*success, *failure))
        keys = ", ".join(dict.fromkeys(op.key for op in success)) or "-"
        resp = await self._run(
            f"transaction on {keys}", lambda s: s.Txn(req, self.timeout), retry=read_only
        )
        return TxnResult(
            bool(resp.succeeded),
            int(resp.header.revision),
            [_op_result(r) for r in resp.responses],
        )

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        req = etcdrpc.CompactionRequest(revision=revision, physical=physical)
        await self._run("compact", lambda s: s.Compact(req, self.timeout), retry=False)

    # ------------------------------------------------------------ leases

    async def lease_grant(self, ttl: int) -> Lease:
        """A new lease; etcd may round `ttl` up to its minimum (about 1.5 x the
        election timeout)."""
        req = etcdrpc.LeaseGrantRequest(TTL=ttl)
        resp = await self._run(
            "grant lease", lambda s: s.LeaseGrant(req, self.timeout), kind="lease", retry=False
        )
        if resp.error:
            raise EtcdError(f"grant lease: {resp.error}")
        return Lease(int(resp.ID), int(resp.TTL))

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh the lease once; returns its TTL, or 0 when it no longer exists."""

        def refresh(stub: Any) -> int:
            call = stub.LeaseKeepAlive(
                iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]), self.timeout
            )
            try:
                for resp in call:
                    return int(resp.TTL)
                return 0
            finally:
                call.cancel()

        return await self._run(f"keep lease {lease_id:x} alive", refresh, kind="lease")

    async def lease_revoke(self, lease_id: int) -> bool:
        """Revoke the lease (deleting its keys); False if it was already gone."""
        req = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        try:
            await self._run(
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
        resp = await self._run(
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
        start, end = _range_key(key, prefix)
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

            handle = _WatchHandle()

            def create(w: Watcher, rev: int = next_rev, h: _WatchHandle = handle) -> _WatchHandle:
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

            try:
                await self._create_watch(what, create, handle)
            except EtcdUnavailable as exc:
                log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _WATCH_RETRY_MAX)
                continue
            watcher, watch_id = handle.watcher, handle.watch_id
            assert watcher is not None and watch_id is not None
            failure: Any = None
            try:
                while failure is None:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        failure = item
                        break
                    delay = _WATCH_RETRY_MIN
                    batch = [_event(e) for e in item.events]
                    if batch:
                        next_rev = max(e.revision for e in batch) + 1
                        yield batch
                    elif item.header.revision >= next_rev:
                        # A progress notification: nothing under the key up to here.
                        next_rev = item.header.revision + 1
            finally:
                if failure is None:  # closed by the consumer: cancel on the server
                    await self._cancel_watch(watcher, watch_id)
            if isinstance(failure, etcd_exc.RevisionCompactedError):
                raise WatchCompacted(failure.compacted_revision)
            if self._closed:
                raise EtcdError("etcd client is closed")
            reason = failure
            idx = self._index_of(watcher)
            if isinstance(failure, grpc.RpcError):
                reason = self._translate(failure, what, idx)
            self._mark_failed(idx)  # whatever broke the stream, resume elsewhere if we can
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
        self, what: str, create: Callable[[Watcher], _WatchHandle], handle: _WatchHandle
    ) -> None:
        try:
            await self._run(what, create, kind="watch")
        except BaseException:
            # Cancelled or timed out while the worker thread may still create the
            # watch: make sure it does not live on unobserved.
            made = handle.abandon()
            if made is not None:
                with contextlib.suppress(RuntimeError):
                    self._executor.submit(_quiet_cancel, *made)
            raise

    async def _cancel_watch(self, watcher: Watcher, watch_id: int) -> None:
        if self._closed:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, watcher.cancel, watch_id
            )
        except (RuntimeError, grpc.RpcError):
            pass  # the stream or the client is gone, and the watch with it

    # ------------------------------------------------------------ cluster

    async def status(self) -> EtcdStatus:
        """Status of the member behind the current endpoint (works without quorum)."""
        req = etcdrpc.StatusRequest()
        resp = await self._run("status", lambda s: s.Status(req, self.timeout), kind="maintenance")
        return EtcdStatus(
            endpoint=self.current_endpoint,
            member_id=int(resp.header.member_id),
            leader_id=int(resp.leader),
            version=str(resp.version),
            db_size=int(resp.dbSize),
            raft_index=int(resp.raftIndex),
            raft_term=int(resp.raftTerm),
            revision=int(resp.header.revision),
        )

    async def healthy(self) -> bool:
        """Whether a linearizable read succeeds (a member is up and has quorum)."""
        req = etcdrpc.RangeRequest(key=b"health")
        try:
            await self._run("health check", lambda s: s.Range(req, self.timeout))
        except EtcdError:
            return False
        return True

    async def member_list(self) -> list[Member]:
        req = etcdrpc.MemberListRequest()
        resp = await self._run(
            "member list", lambda s: s.MemberList(req, self.timeout), kind="cluster"
        )
        return [_member(m) for m in resp.members]

    async def member_add(self, peer_urls: Sequence[str]) -> tuple[Member, list[Member]]:
        """Add a member; returns it and the whole new member list (what the new
        member needs for --initial-cluster)."""
        req = etcdrpc.MemberAddRequest(peerURLs=list(peer_urls))
        resp = await self._run(
            "member add", lambda s: s.MemberAdd(req, self.timeout), kind="cluster", retry=False
        )
        return _member(resp.member), [_member(m) for m in resp.members]

    async def member_remove(self, member_id: int) -> None:
        req = etcdrpc.MemberRemoveRequest(ID=member_id)
        await self._run(
            f"member remove {member_id:x}",
            lambda s: s.MemberRemove(req, self.timeout),
            kind="cluster",
            retry=False,
        )

    async def snapshot(self, path: Path, *, max_seconds: float = 300.0) -> int:
        """Stream a snapshot of the current member's database to `path`
        (written to a temp file, mode 0600, then renamed). Returns its size."""
        path = Path(path)

        def save(stub: Any) -> int:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            size = 0
            try:
                with os.fdopen(fd, "wb") as f:
                    for chunk in stub.Snapshot(etcdrpc.SnapshotRequest(), max_seconds):
                        f.write(chunk.blob)
                        size += len(chunk.blob)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return size

        return await self._run(
            f"snapshot to {path}", save, kind="maintenance", retry=False, deadline=max_seconds
        )
