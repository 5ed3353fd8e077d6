"""Which address a joining node may put in its certificate (pure).

A node's certificate carries the IP the leader verified, never just one the node
claims: the source address of the join connection, or one the operator approved on
the token (`katcall token create --address IP|CIDR`, for a node behind NAT whose
connection arrives from another address)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Bound what one token carries (it is stored in etcd and checked on every join).
MAX_APPROVED = 64


def normalise_ip(text: str) -> IPAddress | None:
    """The IP in `text` (an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def approved_problem(entries: Iterable[str]) -> str:
    """What is wrong with a token's approved addresses ("" if nothing)."""
    items = list(entries)
    if len(items) > MAX_APPROVED:
        return f"at most {MAX_APPROVED} approved addresses per token, not {len(items)}"
    for entry in items:
        try:
            net = ipaddress.ip_network(entry.strip(), strict=True)
        except ValueError:
            return f"approved address {entry[:64]!r} is not an IP address or a CIDR network"
        if net.network_address.is_unspecified or net.is_multicast:
            return f"approved address {entry} cannot be a node's address"
    return ""


def address_problem(advertised: str, source: str, approved: Iterable[str] = ()) -> str:
    """Why a join from `source` may not get a certificate for `advertised` ("" if it
    may): it must be the join connection's source address, or within an address the
    token approves."""
    want = normalise_ip(advertised)
    if want is None:
        return f"advertise address {advertised[:64]!r} is not an IP address"
    if want == normalise_ip(source):
        return ""
    for entry in approved:
        try:
            if want in ipaddress.ip_network(entry.strip(), strict=False):
                return ""
        except ValueError:
            continue
    return (
        f"advertise address {want} is not the address this join came from "
        f"({source[:64] or 'unknown'}) nor approved on the token; behind NAT, create the "
        f"token with `katcall token create --address {want}`"
    )
