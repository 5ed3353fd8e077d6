"""`katcall top instances|nodes`: current cpu and memory use, from each node's Podman stats
(the leader asks the nodes at call time: ClusterAPI.ListInstanceStats; nothing is stored).

CPU is the use over about one second, in cores (`250m` is a quarter of a core); the
percentages compare it with the workload's requests and limits (`-` when the workload sets
none). A node's use is the sum of its KAT instances (not other processes on the host),
against the node's allocatable and what its instances request. A node that does not answer
is named on stderr; the exit code is 1 only when no node answered.
"""

from __future__ import annotations

import argparse
import sys

from api.v1alpha1 import kat_pb2
from internal.manifests.quantity import format_cpu, parse_cpu, parse_memory
from katcall import output
from katcall.client import CallError, Client
from katcall.session import connect, namespace


def _millis(cores: float) -> int:
    return round(cores * 1000)


def _pct(used: int, of: int) -> str:
    return f"{100 * used // of}%" if of > 0 else "-"


def _quantity(text: str, parse: object) -> int:
    try:
        return parse(text) if text else 0  # type: ignore[operator]
    except ValueError:
        return 0


def _limits(w: kat_pb2.Workload | None) -> tuple[int, int, int, int]:
    """(cpu request, cpu limit, memory request, memory limit) of one instance; 0: unset."""
    if w is None:
        return 0, 0, 0, 0
    res = w.spec.container.resources
    return (
        _quantity(res.requests.cpu, parse_cpu),
        _quantity(res.limits.cpu, parse_cpu),
        _quantity(res.requests.memory, parse_memory),
        _quantity(res.limits.memory, parse_memory),
    )


def _sample(client: Client, ns: str, node: str = "") -> kat_pb2.TopResponse:
    resp = client.list_instance_stats(kat_pb2.TopRequest(namespace=ns, node=node), timeout=60)
    for why in resp.unreachable:
        print(f"warning: node {why}", file=sys.stderr)
    return resp


def _workloads(client: Client, ns: str) -> dict[tuple[str, str], kat_pb2.Workload]:
    items = client.list_workloads(kat_pb2.ListRequest(namespace=ns)).items
    return {(w.metadata.namespace, w.metadata.name): w for w in items}


def instance_rows(
    stats: list[kat_pb2.InstanceStats],
    workloads: dict[tuple[str, str], kat_pb2.Workload],
    with_ns: bool,
) -> tuple[list[str], list[list[str]]]:
    headers = ["NAME", "WORKLOAD", "NODE", "CPU", "CPU/REQ", "CPU/LIM"]
    headers += ["MEMORY", "MEM/REQ", "MEM/LIM"]
    rows = []
    for s in stats:
        cpu_req, cpu_lim, mem_req, mem_lim = _limits(workloads.get((s.namespace, s.workload)))
        cpu = _millis(s.cpu_cores)
        row = [s.instance_id, s.workload, s.node, format_cpu(cpu), _pct(cpu, cpu_req)]
        row += [_pct(cpu, cpu_lim), output.approx_memory(s.memory_bytes)]
        row += [_pct(s.memory_bytes, mem_req), _pct(s.memory_bytes, mem_lim)]
        rows.append(([s.namespace] if with_ns else []) + row)
    return (["NAMESPACE"] if with_ns else []) + headers, rows


def node_rows(
    nodes: list[kat_pb2.Node],
    stats: list[kat_pb2.InstanceStats],
    workloads: dict[tuple[str, str], kat_pb2.Workload],
) -> tuple[list[str], list[list[str]]]:
    headers = ["NAME", "CPU", "CPU%", "CPU-REQUESTS", "MEMORY", "MEMORY%", "MEMORY-REQUESTS"]
    headers.append("INSTANCES")
    rows = []
    for n in nodes:
        mine = [s for s in stats if s.node == n.metadata.name]
        cpu = sum(_millis(s.cpu_cores) for s in mine)
        mem = sum(s.memory_bytes for s in mine)
        cpu_req = sum(_limits(workloads.get((s.namespace, s.workload)))[0] for s in mine)
        mem_req = sum(_limits(workloads.get((s.namespace, s.workload)))[2] for s in mine)
        alloc = n.status.allocatable
        rows.append(
            [
                n.metadata.name,
                format_cpu(cpu),
                _pct(cpu, alloc.cpu_millis),
                format_cpu(cpu_req),
                output.approx_memory(mem),
                _pct(mem, alloc.memory_bytes),
                output.approx_memory(mem_req),
                str(len(mine)),
            ]
        )
    return headers, rows


def cmd_top(args: argparse.Namespace) -> int:
    kind = {"instances": "instances", "instance": "instances", "inst": "instances"}.get(
        args.kind, {"nodes": "nodes", "node": "nodes", "no": "nodes"}.get(args.kind, "")
    )
    if not kind:
        raise CallError(f"top shows instances or nodes, not {args.kind!r}")
    fmt = output.check_format(args.output or "", ("json", "yaml", "jsonpath=EXPR"))
    with connect(args) as client:
        if kind == "instances":
            ns = namespace(args)
            resp = _sample(client, ns, args.node or "")
            stats = list(resp.instances)
            if args.name:
                stats = [s for s in stats if s.instance_id == args.name or s.workload == args.name]
            if fmt:
                print(output.render(stats, fmt))
            else:
                headers, rows = instance_rows(stats, _workloads(client, ns), ns == "*")
                print(output.table(headers, rows) if rows else "no running instances")
        else:
            resp = _sample(client, "*")
            nodes = list(client.list_nodes(kat_pb2.ListRequest()).items)
            if args.name:
                nodes = [n for n in nodes if n.metadata.name == args.name]
                if not nodes:
                    raise CallError(f"node {args.name!r} not found")
            stats = list(resp.instances)
            if fmt:
                print(output.render(stats, fmt))
            else:
                headers, rows = node_rows(nodes, stats, _workloads(client, "*"))
                print(output.table(headers, rows))
    return 1 if resp.unreachable and not resp.instances else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "top",
        help="show cpu and memory use of instances or nodes",
        description="Current cpu (cores over about a second) and memory of instances, from "
        "Podman's stats on their nodes, against the workload's requests and limits; or per "
        "node, the sum of its instances against its allocatable and requests.",
    )
    p.add_argument("kind", metavar="instances|nodes")
    p.add_argument("name", nargs="?", metavar="NAME", help="one instance, workload or node")
    p.add_argument("--node", default="", help="instances: only those on this node")
    p.set_defaults(func=cmd_top, late_positionals=("name",))
