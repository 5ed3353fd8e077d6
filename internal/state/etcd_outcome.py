"""Whether a write transaction that got no answer (`EtcdNoAnswer`) was applied.

A write in flight when etcd's raft leader dies can be lost (forwarded to the dead
leader) or committed (replicated before it died, then committed by the next leader); the
client only sees its deadline pass. For a transaction whose branch only puts, a
linearizable read of the put keys afterwards decides it for good: once a new leader
serves such a read, an entry of the old term is either committed or gone. Every key
holding exactly the bytes (and lease) we put: applied. None of them: not applied, and it
never will be, so it can be sent again (its guards are evaluated again). Anything else,
or a branch that deletes or reads: unknown, and the caller hears the original failure.

Pure: `outcome()` takes the puts and what was read; etcd.py does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum

from internal.state.etcd_values import KeyValue, Put, TxnOp


class Outcome(Enum):
    APPLIED = "applied"
    NOT_APPLIED = "not applied"
    UNKNOWN = "unknown"


def decidable(ops: Sequence[TxnOp]) -> list[Put] | None:
    """The puts whose read-back decides the outcome, or None when it cannot be decided."""
    if not ops or not all(isinstance(op, Put) for op in ops):
        return None
    return [op for op in ops if isinstance(op, Put)]


def outcome(puts: Sequence[Put], found: Mapping[str, KeyValue | None]) -> Outcome:
    ours = [
        (kv := found.get(p.key)) is not None and kv.value == p.value and kv.lease == p.lease
        for p in puts
    ]
    if all(ours):
        return Outcome.APPLIED
    if not any(ours):
        return Outcome.NOT_APPLIED
    return Outcome.UNKNOWN
