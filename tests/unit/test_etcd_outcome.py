"""A write transaction that got no answer (its raft leader died with it in flight) is
decided by reading its keys back: applied, not applied (safe to send again), or unknown
(the caller hears the failure). See internal/state/etcd_outcome.py."""

from __future__ import annotations

from internal.state.etcd_outcome import Outcome, decidable, outcome
from internal.state.etcd_values import Delete, Get, KeyValue, Put


def kv(key: str, value: bytes, lease: int = 0) -> KeyValue:
    return KeyValue(key=key, value=value, mod_revision=7, create_revision=7, version=1, lease=lease)


PUTS = [Put("/a", b"new"), Put("/b", b"also", lease=5)]


def test_every_key_holding_our_bytes_means_applied() -> None:
    assert outcome(PUTS, {"/a": kv("/a", b"new"), "/b": kv("/b", b"also", 5)}) is Outcome.APPLIED


def test_no_key_holding_our_bytes_means_not_applied() -> None:
    found = {"/a": None, "/b": kv("/b", b"old", 5)}
    assert outcome(PUTS, found) is Outcome.NOT_APPLIED


def test_a_mix_or_another_lease_is_not_taken_for_ours() -> None:
    assert outcome(PUTS, {"/a": kv("/a", b"new"), "/b": None}) is Outcome.UNKNOWN
    assert outcome(PUTS, {"/a": kv("/a", b"new"), "/b": kv("/b", b"also", 6)}) is Outcome.UNKNOWN


def test_only_branches_of_puts_can_be_decided() -> None:
    assert decidable(PUTS) == PUTS
    assert decidable([Put("/a", b"x"), Delete("/b")]) is None
    assert decidable([Put("/a", b"x"), Get("/b")]) is None
    assert decidable([]) is None
