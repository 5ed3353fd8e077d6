"""pyetcd's wire messages <-> KAT's etcd values (`etcd_values`), the gRPC channel
options, and the bookkeeping of a watch created on a worker thread. With `etcd`
and `etcd_endpoints`, the only modules that import `pyetcd`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Literal

import grpc
from pyetcd import etcdrpc
from pyetcd import events as etcd_events
from pyetcd.watch import Watcher

from internal.state.etcd_values import (
    Compare,
    Delete,
    KeyValue,
    KVEvent,
    Member,
    OpResult,
    Put,
    TxnOp,
    as_bytes,
    range_key,
)

GRPC_OPTIONS = [
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
WATCH_METADATA = (("hasleader", "true"),)


def kv_value(kv: Any) -> KeyValue:
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


def compare_msg(c: Compare) -> Any:
    target, fieldname = _TARGETS[c.target]
    msg = etcdrpc.Compare(key=as_bytes(c.key), result=_RESULTS[c.op], target=target)
    if c.target == "value":
        msg.value = as_bytes(c.value) if isinstance(c.value, str | bytes) else str(c.value).encode()
    else:
        setattr(msg, fieldname, int(c.value))
    return msg


def op_msg(op: TxnOp) -> Any:
    if isinstance(op, Put):
        return etcdrpc.RequestOp(
            request_put=etcdrpc.PutRequest(key=as_bytes(op.key), value=op.value, lease=op.lease)
        )
    start, end = range_key(op.key, op.prefix)
    if isinstance(op, Delete):
        return etcdrpc.RequestOp(
            request_delete_range=etcdrpc.DeleteRangeRequest(key=start, range_end=end)
        )
    return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=start, range_end=end))


def op_result(resp: Any) -> OpResult:
    kind = resp.WhichOneof("response")
    if kind == "response_range":
        return OpResult(kvs=[kv_value(kv) for kv in resp.response_range.kvs])
    if kind == "response_delete_range":
        return OpResult(deleted=resp.response_delete_range.deleted)
    return _PUT_RESULT


# What every put of a transaction returns (nothing): one shared, frozen value instead of a
# new one per put (a transaction of 100 instance writes made 100).
_PUT_RESULT = OpResult(kvs=[])


def member_value(m: Any) -> Member:
    return Member(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs))


def event_value(ev: Any) -> KVEvent:
    kind: Literal["put", "delete"] = "delete" if isinstance(ev, etcd_events.DeleteEvent) else "put"
    # The mvccpb.Event under pyetcd's wrapper: the wrapper's __getattr__ per field was a
    # third of the cost of reading a watch event (10,000 instance writes come back so).
    raw = ev._event
    # an empty prev_kv when etcd had none to send
    prev = kv_value(raw.prev_kv) if raw.prev_kv.key else None
    return KVEvent(kind, kv_value(raw.kv), prev)


class WatchHandle:
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


def quiet_cancel(watcher: Watcher, watch_id: int) -> None:
    with contextlib.suppress(Exception):
        watcher.cancel(watch_id)


STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "kv": etcdrpc.KVStub,
    "lease": etcdrpc.LeaseStub,
    "cluster": etcdrpc.ClusterStub,
    "maintenance": etcdrpc.MaintenanceStub,
}


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """Whether `key` is the watched key (end empty) or in [start, end) ("\\0": to the end)."""
    if not end:
        return key == start
    return key >= start and (end == b"\0" or key < end)
