"""The values of KAT's etcd API: errors, keys and revisions, transaction guards
and operations, watch events, leases, members. Pure data, no pyetcd: callers
(the store, election, tests) build and read these; `etcd_wire` turns them into
etcd's messages and back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit


class EtcdError(Exception):
    """An etcd call failed for a reason other than reachability."""


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered in time: down, unreachable, or no quorum."""


class EtcdNoAnswer(EtcdUnavailable):
    """No answer in time (our deadline, or etcd's own "request timed out"): a write may or
    may not have been carried out."""


class EtcdNotExecuted(EtcdUnavailable):
    """etcd refused the request before carrying it out because its raft leadership was
    changing (an election, or a leadership transfer): sending it again is safe, writes
    included."""


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


def as_bytes(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode()


def prefix_end(prefix: str | bytes) -> bytes:
    """The range end covering every key that starts with `prefix`."""
    raw = bytearray(as_bytes(prefix))
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # empty prefix (or all 0xff): to the end of the keyspace


def range_key(key: str, prefix: bool) -> tuple[bytes, bytes]:
    start = as_bytes(key) or b"\0"
    return start, (prefix_end(key) if prefix else b"")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """ "https://10.0.0.1:2379", "10.0.0.1:2379" or "[::1]:2379" -> (host, port)."""
    parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"etcd endpoint {endpoint!r} needs a host and a port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host, parts.port
