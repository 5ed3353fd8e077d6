"""`katcall get ingress [-o wide]`: every ingress rule with its backends and their readiness,
from the leader's service view (the one DNS and the ingress nodes follow). Which nodes
serve ingress: `katcall get nodes -o wide` (label kat.dws.rip/ingress=true)."""

from __future__ import annotations

import argparse

from api.v1alpha1 import kat_pb2
from katcall import output
from katcall.client import Client
from katcall.get_cmd import register_resource


def _list(client: Client, args: argparse.Namespace) -> list[kat_pb2.ServiceEndpoints]:
    ns = "*" if getattr(args, "all_namespaces", False) else (args.namespace or "default")
    view = client.get_endpoints(kat_pb2.ListRequest(namespace=ns))
    return [s for s in view.services if s.ingress]


def _container_port(rule: kat_pb2.IngressRule, svc: kat_pb2.ServiceEndpoints) -> int:
    for p in svc.ports:
        if p.name == rule.service_port_name or (not rule.service_port_name and len(svc.ports) == 1):
            return p.container_port
    return rule.service_port


def _port(rule: kat_pb2.IngressRule, svc: kat_pb2.ServiceEndpoints) -> str:
    for p in svc.ports:
        if p.name == rule.service_port_name or (not rule.service_port_name and len(svc.ports) == 1):
            return f"{p.name}({p.container_port})" if p.name else str(p.container_port)
    return str(rule.service_port or "?")


def _rows(items: list[kat_pb2.ServiceEndpoints], wide: bool) -> str:
    headers = ["HOST", "PATH", "WORKLOAD", "PORT", "TLS", "READY"]
    if wide:
        headers += ["BACKENDS"]
    rows = []
    for s in items:
        for r in s.ingress:
            ready = f"{len(s.endpoints)}/{s.desired}" if s.desired else str(len(s.endpoints))
            row = [r.host, r.path or "/", f"{s.namespace}/{s.workload}", _port(r, s),
                   "yes" if r.tls else "no", ready]  # fmt: skip
            if wide:
                port = _container_port(r, s)
                row.append(",".join(f"{e.ip}:{port}" for e in s.endpoints) or "<none>")
            rows.append(row)
    return output.table(headers, rows)


def service_section(client: Client, namespace: str, name: str) -> str:
    """For `describe workload`: its DNS names and ingress rules, with what is ready now."""
    info = client.get_cluster_info(kat_pb2.ClusterInfoRequest())
    domain = info.configuration.spec.cluster_domain or "kat.cluster.local"
    view = client.get_endpoints(kat_pb2.ListRequest(namespace=namespace))
    svc = next((s for s in view.services if s.workload == name), None)
    base = f"{name}.{namespace}.svc.{domain}"
    lines = ["DNS:"]
    ready = ", ".join(e.ip for e in svc.endpoints) if svc and svc.endpoints else "<none ready>"
    lines.append(f"  {base}  A: {ready}")
    if svc is not None:
        lines.append(f"  <instance>.{base}  A: that instance while ready")
        for p in svc.ports:
            if p.name:
                proto = "udp" if p.protocol == kat_pb2.ServicePort.UDP else "tcp"
                lines.append(f"  _{p.name}._{proto}.{base}  SRV: port {p.container_port}")
    lines.append("Ingress:")
    rules = list(svc.ingress) if svc else []
    for r in rules:
        tls = " (tls)" if r.tls else ""
        lines.append(f"  {r.host}{r.path or '/'} -> port {_port(r, svc)}{tls}")  # type: ignore[arg-type]
    if not rules:
        lines.append("  <none>")
    nodes = ", ".join(view.ingress_nodes) or "<no node labelled kat.dws.rip/ingress=true>"
    if rules:
        lines.append(f"  served by: {nodes}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    register_resource("ingress", _list, _rows, "ingresses", "ing")
