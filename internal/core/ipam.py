"""Overlay address management (pure logic): node subnets out of clusterCIDR."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def node_prefix(cluster_cidr: str, node_subnet_bits: int) -> int:
    return ipaddress.ip_network(cluster_cidr).prefixlen + node_subnet_bits


def node_subnets(cluster_cidr: str, node_subnet_bits: int) -> Iterator[Network]:
    """Every node subnet of the cluster, in address order."""
    return ipaddress.ip_network(cluster_cidr).subnets(prefixlen_diff=node_subnet_bits)


def free_subnets(cluster_cidr: str, node_subnet_bits: int, used: Iterable[str]) -> Iterator[str]:
    """Subnets not in `used`, in address order; the store decides races."""
    taken = {ipaddress.ip_network(u) for u in used}
    for net in node_subnets(cluster_cidr, node_subnet_bits):
        if net not in taken:
            yield str(net)
