"""Subordinate id ranges of workload users: a freed range is given out again."""

from __future__ import annotations

from kat_agent.node.podman import users


def test_a_freed_range_is_reused_first() -> None:
    c = users.SUBID_COUNT
    first, second, third = users.SUBID_MIN, users.SUBID_MIN + c, users.SUBID_MIN + 2 * c
    assert users._free_subid_start([]) == first
    assert users._free_subid_start([(first, c), (second, c)]) == third
    # the user of `second` was removed: its range is the next one given out
    assert users._free_subid_start([(first, c), (third, c)]) == second
    # ranges of other owners (a person's 100000:65536 in /etc/subuid) are avoided
    assert users._free_subid_start([(first + 10, 5)]) == first + 15
