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
    """Subnets not in `used`, in address order; the store decides races. `used` holds
    subnets as this module writes them (str of the network): compared as strings, since
    parsing every used subnet on every join made joins grow with the cluster's size."""
    taken = set(used)
    for net in node_subnets(cluster_cidr, node_subnet_bits):
        text = str(net)
        if text not in taken:
            yield text


def free_address(subnet: str, used: Iterable[str]) -> str | None:
    """The lowest host address of a node subnet that is not in `used`, skipping the first
    host address (the node's own: bridge gateway and overlay address). None when full."""
    net = ipaddress.ip_network(subnet, strict=False)
    taken = {ipaddress.ip_address(u) for u in used}
    hosts = net.hosts()
    next(hosts, None)  # the node's address
    for addr in hosts:
        if addr not in taken:
            return str(addr)
    return None
