"""Which address a joining node's certificate may hold (internal/core/join_address.py)."""

from __future__ import annotations

import pytest

from internal.core.join_address import address_problem, approved_problem


def test_the_source_address_is_accepted() -> None:
    assert address_problem("10.0.0.5", "10.0.0.5") == ""
    # gRPC may report an IPv4 peer as IPv4-mapped IPv6
    assert address_problem("10.0.0.5", "::ffff:10.0.0.5") == ""


def test_another_address_is_refused_with_the_way_out() -> None:
    why = address_problem("10.0.0.1", "10.0.0.5")
    assert "10.0.0.1" in why and "10.0.0.5" in why
    assert "katcall token create --address 10.0.0.1" in why


@pytest.mark.parametrize("approved", [["10.0.0.1"], ["192.168.0.0/24", "10.0.0.0/30"]])
def test_an_approved_address_is_accepted(approved: list[str]) -> None:
    assert address_problem("10.0.0.1", "203.0.113.7", approved) == ""


def test_approval_of_another_address_does_not_help() -> None:
    assert address_problem("10.0.0.1", "203.0.113.7", ["10.0.0.2", "10.0.1.0/24"])


def test_not_an_ip_and_garbage_approvals() -> None:
    assert "not an IP" in address_problem("node.example", "10.0.0.5")
    assert address_problem("10.0.0.1", "10.0.0.5", ["junk"])  # a bad entry approves nothing


def test_approved_entries_are_checked_at_token_creation() -> None:
    assert approved_problem(["10.0.0.1", "fd00::/64"]) == ""
    assert "not an IP" in approved_problem(["10.0.0.1", "example.com"])
    assert "10.0.0.1/24" in approved_problem(["10.0.0.1/24"])  # host bits set
    assert "cannot be" in approved_problem(["0.0.0.0"])
    assert "at most" in approved_problem([f"10.0.0.{i}" for i in range(100)])
