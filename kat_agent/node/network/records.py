"""The cluster DNS zone as a pure lookup table, built from the leader's endpoint view.

Names (all under `<clusterDomain>`, case-insensitive):

- `<workload>.<namespace>.svc.<domain>`  A: the ready instances' addresses, all of them,
  rotated by one on every answer so that clients that take the first spread their load;
- `<instance-id>.<workload>.<namespace>.svc.<domain>`  A: that instance, while it is ready;
- `_<port-name>._<tcp|udp>.<workload>.<namespace>.svc.<domain>`  SRV: one record per ready
  instance (target: its instance name) for each named port of the VirtualLoadBalancer;
- the zone apex, `svc.<domain>`, `<namespace>.svc.<domain>` and known names asked for
  another type: no data (NOERROR, empty); a workload with no ready instance the same;
- any other name in the domain: NXDOMAIN; a name outside it: forwarded upstream.

Answers carry a short TTL (`TTL`): readiness changes within seconds, and a client that
cached an address longer would keep calling an instance that is gone.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from api.v1alpha1 import kat_pb2

TTL = 5  # seconds, answers and (via the SOA minimum) negative answers
SRV_PRIORITY = 0
SRV_WEIGHT = 10


class Kind(enum.Enum):
    ANSWER = "answer"  # NOERROR, with `addresses` / `srv` (possibly empty: no data)
    NXDOMAIN = "nxdomain"
    FORWARD = "forward"  # not in the cluster domain


@dataclass(frozen=True)
class Srv:
    port: int
    target: str  # an instance name in the zone
    address: str  # its A record (the additional section)


@dataclass(frozen=True)
class Lookup:
    kind: Kind
    addresses: tuple[str, ...] = ()
    srv: tuple[Srv, ...] = ()


NXDOMAIN = Lookup(Kind.NXDOMAIN)
FORWARD = Lookup(Kind.FORWARD)
NODATA = Lookup(Kind.ANSWER)


@dataclass
class _Service:
    addresses: tuple[str, ...]
    instances: dict[str, str]  # instance id -> address
    # (port name, protocol "tcp"/"udp") -> container port
    ports: dict[tuple[str, str], int]


def node_dns_address(subnet: str) -> str:
    """The node's address on its instance network (the first host address of its subnet:
    the bridge gateway in root mode, the overlay address otherwise): DNS listens there."""
    return str(ipaddress.ip_network(subnet, strict=False).network_address + 1)


def normalise(name: str) -> str:
    return name.lower().rstrip(".")


def search_path(namespace: str, domain: str) -> list[str]:
    """The short search list containers get: their namespace's services, then all."""
    d = normalise(domain)
    return [f"{namespace}.svc.{d}", f"svc.{d}"]


def service_name(workload: str, namespace: str, domain: str) -> str:
    return f"{workload}.{namespace}.svc.{normalise(domain)}"


@dataclass
class ZoneTable:
    """Lookups over one endpoint view. Cheap to rebuild: a new table per view."""

    domain: str
    services: dict[tuple[str, str], _Service] = field(default_factory=dict)
    namespaces: frozenset[str] = frozenset()
    _turn: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def build(cls, domain: str, view: Iterable[kat_pb2.ServiceEndpoints]) -> ZoneTable:
        services: dict[tuple[str, str], _Service] = {}
        for s in view:
            ready = [(e.instance_id.lower(), e.ip) for e in s.endpoints if e.ip]
            ports = {
                (p.name.lower(), "udp" if p.protocol == kat_pb2.ServicePort.UDP else "tcp"): (
                    p.container_port
                )
                for p in s.ports
                if p.name
            }
            services[(s.namespace.lower(), s.workload.lower())] = _Service(
                tuple(ip for _, ip in ready), dict(ready), ports
            )
        return cls(normalise(domain), services, frozenset(ns for ns, _ in services))

    def in_zone(self, qname: str) -> bool:
        n = normalise(qname)
        return n == self.domain or n.endswith("." + self.domain)

    def _rotated(self, key: tuple[str, str], items: tuple[str, ...]) -> tuple[str, ...]:
        if len(items) < 2:
            return items
        turn = self._turn.get(key, 0)
        self._turn[key] = (turn + 1) % len(items)
        return items[turn:] + items[:turn]

    def lookup(self, qname: str, qtype: str) -> Lookup:
        """What to answer for `qname` (any case, trailing dot or not) and `qtype` ("A",
        "SRV", "AAAA", ... as dnslib names them)."""
        n = normalise(qname)
        if n != self.domain and not n.endswith("." + self.domain):
            return FORWARD
        rel = n[: -len(self.domain)].rstrip(".")
        labels = rel.split(".") if rel else []
        # labels read right to left: svc, namespace, workload, instance or _proto, _port
        if not labels or labels == ["svc"]:
            return NODATA
        if len(labels) < 2 or labels[-1] != "svc":
            return NXDOMAIN
        ns = labels[-2]
        if len(labels) == 2:
            return NODATA if ns in self.namespaces else NXDOMAIN
        svc = self.services.get((ns, labels[-3]))
        if svc is None:
            return NXDOMAIN
        key = (ns, labels[-3])
        if len(labels) == 3:
            if qtype in ("A", "ANY"):
                return Lookup(Kind.ANSWER, self._rotated(key, svc.addresses))
            return NODATA
        if len(labels) == 4:
            ip = svc.instances.get(labels[0])
            if ip is None:
                return NXDOMAIN
            return Lookup(Kind.ANSWER, (ip,)) if qtype in ("A", "ANY") else NODATA
        if len(labels) == 5 and labels[0].startswith("_") and labels[1].startswith("_"):
            port = svc.ports.get((labels[0][1:], labels[1][1:]))
            if port is None:
                return NXDOMAIN
            if qtype not in ("SRV", "ANY"):
                return NODATA
            base = f"{labels[-3]}.{ns}.svc.{self.domain}"
            order = self._rotated(key, tuple(svc.instances))
            return Lookup(
                Kind.ANSWER,
                srv=tuple(Srv(port, f"{i}.{base}", svc.instances[i]) for i in order),
            )
        return NXDOMAIN
