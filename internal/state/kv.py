"""Typed, revision-guarded access to etcd: protobuf values with their mod revision
(`Versioned`), guarded writes (`WriteTxn`) and typed watches. Knows no key of its
own (`internal.state.keys` owns the layout); `Store` builds on it.

Reads return `Versioned` values carrying the etcd mod revision, which is also
written into `metadata.resource_version` (or `Instance.resource_version`).
Writes that depend on a read pass that revision back: `update` and `delete`
refuse with `StaleWrite` when the key changed meanwhile, `create` refuses with
`AlreadyExists`; nothing is overwritten blindly. `Store.txn()` combines several
such writes into one atomic transaction.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from google.protobuf.message import Message

from api.v1alpha1 import kat_pb2
from internal.state.etcd import EtcdClient
from internal.state.etcd_values import (
    Compare,
    Delete,
    Get,
    KeyValue,
    KVEvent,
    Put,
    TxnOp,
    WatchCompacted,
)
from internal.state.keys import LEADER_KEY, check_key

M = TypeVar("M", bound=Message)

# A consumer whose watch start revision was compacted must re-list.
Compacted = WatchCompacted


class StoreError(Exception):
    pass


class AlreadyExists(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"{key} already exists")
        self.key = key


class StaleWrite(StoreError):
    """The key is not at the revision the write was based on (0: it is gone)."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        now = f"it is at revision {actual}" if actual else "it has been deleted"
        super().__init__(f"{key} changed since revision {expected}: {now}")
        self.key = key
        self.expected = expected
        self.actual = actual

    @property
    def deleted(self) -> bool:
        return self.actual == 0


class NotLeader(StoreError):
    """A write guarded by leadership found another (or no) leader."""


class SubnetsExhausted(StoreError):
    pass


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class Versioned(Generic[M]):
    msg: M
    mod_revision: int
    create_revision: int = 0
    key: str = ""


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True)
class WatchEvent(Generic[M]):
    type: EventType
    key: str
    msg: M | None  # PUT: the new value; DELETE: the last value (None if etcd had none)
    revision: int  # the etcd revision of this change


@dataclass(frozen=True)
class CommitResult:
    revision: int  # every key written by the transaction has this mod revision
    deleted: int = 0


def _stamp(msg: Message, revision: int) -> None:
    fields = msg.DESCRIPTOR.fields_by_name
    meta = fields.get("metadata")
    if meta is not None and meta.message_type is kat_pb2.ObjectMeta.DESCRIPTOR:
        msg.metadata.resource_version = revision  # type: ignore[attr-defined]
    elif "resource_version" in fields:
        msg.resource_version = revision  # type: ignore[attr-defined]


def decode(msg_type: type[M], value: bytes, revision: int) -> M:
    msg = msg_type()
    msg.ParseFromString(value)
    _stamp(msg, revision)
    return msg


def versioned(msg_type: type[M], kv: KeyValue) -> Versioned[M]:
    return Versioned(
        decode(msg_type, kv.value, kv.mod_revision), kv.mod_revision, kv.create_revision, kv.key
    )


def watch_event(msg_type: type[M], ev: KVEvent) -> WatchEvent[M]:
    if ev.type == "put":
        return WatchEvent(
            EventType.PUT, ev.kv.key, decode(msg_type, ev.kv.value, ev.revision), ev.revision
        )
    prev = decode(msg_type, ev.prev.value, ev.prev.mod_revision) if ev.prev else None
    return WatchEvent(EventType.DELETE, ev.kv.key, prev, ev.revision)


# ---------------------------------------------------------------- transactions


@dataclass(frozen=True)
class _Guard:
    key: str
    target: Literal["create", "mod"]
    expected: int
    error: Literal["exists", "stale", "leader"]


@dataclass
class WriteTxn:
    """Several guarded writes committed atomically, or none of them:

    await store.txn().update(wl_key, wl, rev).create(rev_key, revision).commit()
    """

    _etcd: EtcdClient
    _guards: list[_Guard] = field(default_factory=list)
    _ops: list[TxnOp] = field(default_factory=list)

    def create(self, key: str, msg: Message, *, lease: int = 0) -> WriteTxn:
        self._guards.append(_Guard(check_key(key), "create", 0, "exists"))
        self._ops.append(Put(key, msg.SerializeToString(), lease))
        return self

    def update(self, key: str, msg: Message, expected_revision: int) -> WriteTxn:
        if expected_revision <= 0:
            raise ValueError(f"update of {key} needs the revision it was read at")
        self._guards.append(_Guard(check_key(key), "mod", expected_revision, "stale"))
        self._ops.append(Put(key, msg.SerializeToString()))
        return self

    def delete(self, key: str, expected_revision: int | None = None) -> WriteTxn:
        if expected_revision is not None:
            self._guards.append(_Guard(check_key(key), "mod", expected_revision, "stale"))
        self._ops.append(Delete(check_key(key)))
        return self

    def put(self, put: Put) -> WriteTxn:
        """An unguarded write (e.g. an event, `Store.event_put`)."""
        check_key(put.key)
        self._ops.append(put)
        return self

    def delete_prefix(self, prefix: str) -> WriteTxn:
        if not prefix.endswith("/"):
            raise ValueError(f"prefix {prefix!r} must end with '/'")
        self._ops.append(Delete(check_key(prefix), prefix=True))
        return self

    def require_revision(self, key: str, mod_revision: int) -> WriteTxn:
        """Commit only if `key` is still at `mod_revision` (without writing it)."""
        self._guards.append(_Guard(check_key(key), "mod", mod_revision, "stale"))
        return self

    def require_leader(self, leader_revision: int) -> WriteTxn:
        """Commit only while the leadership won at `leader_revision` (the leader
        key's create revision, `Election.leader_revision`) still holds."""
        self._guards.append(_Guard(LEADER_KEY, "create", leader_revision, "leader"))
        return self

    async def commit(self) -> CommitResult:
        compares = [Compare(g.key, g.target, "==", g.expected) for g in self._guards]
        checked = list(dict.fromkeys(g.key for g in self._guards))
        result = await self._etcd.txn(compares, self._ops, [Get(k) for k in checked])
        if result.succeeded:
            return CommitResult(result.revision, sum(r.deleted for r in result.results))
        # The failure branch read the guarded keys atomically with the compare,
        # so one of the guards is false in what it read.
        current = {kv.key: kv for r in result.results for kv in r.kvs}
        for g in self._guards:
            kv = current.get(g.key)
            actual = (
                0
                if kv is None
                else (kv.create_revision if g.target == "create" else kv.mod_revision)
            )
            if actual == g.expected:
                continue
            if g.error == "exists":
                raise AlreadyExists(g.key)
            if g.error == "leader":
                raise NotLeader("leadership was lost; the write was not applied")
            raise StaleWrite(g.key, g.expected, actual)
        raise StoreError("transaction failed without a failing guard")  # unreachable


# ---------------------------------------------------------------- typed access


class TypedKV:
    """Typed get/list/write/watch of protobuf values under /kat/."""

    def __init__(self, etcd: EtcdClient) -> None:
        self._etcd = etcd

    @property
    def etcd(self) -> EtcdClient:
        return self._etcd

    # ------------------------------------------------------------ generic

    async def revision(self) -> int:
        return await self._etcd.revision()

    async def get(self, key: str, msg_type: type[M]) -> Versioned[M] | None:
        kv = await self._etcd.get(check_key(key))
        return None if kv is None else versioned(msg_type, kv)

    async def list_with_revision(
        self, prefix: str, msg_type: type[M]
    ) -> tuple[builtins.list[Versioned[M]], int]:
        """Every value under `prefix` (in key order) and the revision they were
        read at: watch from revision + 1 to follow on without a gap."""
        result = await self._etcd.get_prefix(check_key(prefix))
        return [versioned(msg_type, kv) for kv in result.kvs], result.revision

    async def list(self, prefix: str, msg_type: type[M]) -> builtins.list[Versioned[M]]:
        items, _ = await self.list_with_revision(prefix, msg_type)
        return items

    async def create(self, key: str, msg: Message, *, lease: int = 0) -> int:
        """Write `msg` if `key` does not exist (else AlreadyExists); returns its revision."""
        return (await self.txn().create(key, msg, lease=lease).commit()).revision

    async def update(self, key: str, msg: Message, expected_revision: int) -> int:
        """Write `msg` if `key` is still at `expected_revision` (else StaleWrite);
        returns the new revision."""
        return (await self.txn().update(key, msg, expected_revision).commit()).revision

    async def delete(self, key: str, expected_revision: int | None = None) -> bool:
        """Delete `key` (only if at `expected_revision` when given, else StaleWrite).
        Returns whether it existed."""
        return (await self.txn().delete(key, expected_revision).commit()).deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        return (await self.txn().delete_prefix(prefix).commit()).deleted

    def txn(self) -> WriteTxn:
        return WriteTxn(self._etcd)

    async def watch(
        self, prefix: str, msg_type: type[M], start_revision: int | None = None
    ) -> AsyncIterator[WatchEvent[M]]:
        """Changes under `prefix` from `start_revision` (default: now) on, in
        revision order. Survives etcd restarts and reconnects by resuming after
        the last delivered revision; raises `Compacted` when that history is
        gone (re-list with `list_with_revision` and watch again)."""
        async for ev in self._watch(check_key(prefix), True, msg_type, start_revision):
            yield ev

    async def _watch(
        self, key: str, prefix: bool, msg_type: type[M], start_revision: int | None
    ) -> AsyncIterator[WatchEvent[M]]:
        batches = self._etcd.watch(key, prefix=prefix, start_revision=start_revision)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for ev in batch:
                    yield watch_event(msg_type, ev)
