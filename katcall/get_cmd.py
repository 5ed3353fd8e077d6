"""`katcall get RESOURCE [NAME]` (tables, -o json|yaml|name|jsonpath, -l, -w) and the
registry of resources other modules add to (workloads, instances, ...).

A resource says how to list it, its columns and one row per item; `get` and `get -w` print
with the same columns: NAMESPACE only with -A, as kubectl does.
"""

from __future__ import annotations

import argparse
import difflib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from api.v1alpha1 import kat_pb2
from internal.manifests.quantity import format_cpu
from katcall import output, overlay_view, watch
from katcall.client import CallError, Client
from katcall.session import connect, namespace

NODE_CONDITION = kat_pb2.NodeStatus.Condition.Name

Item = Any  # a resource message (Node, Workload, Instance, ...)


@dataclass(frozen=True)
class Resource:
    name: str  # canonical, plural ("workloads")
    kind: str  # singular, for -o name ("workload/web")
    lister: Callable[[Client, argparse.Namespace, dict[str, str]], list[Item]]
    headers: Callable[[bool, bool], list[str]]  # (wide, with_ns) -> column names
    row: Callable[[Item, bool, bool], list[str]]  # (item, wide, with_ns) -> cells
    key: Callable[[Item], str]  # identity of an item's row in a watch
    name_of: Callable[[Item], str] = output.object_name
    namespaced: bool = False
    selectable: bool = False  # -l applies
    # Changes after the first listing for `get -w`: items whose row may have changed.
    # Default: list again every POLL_SECONDS.
    watcher: Callable[[Client, argparse.Namespace, dict[str, str]], Iterator[Item]] | None = None
    notes: Callable[[list[Item]], list[str]] | None = None  # lines printed under a table


RESOURCES: dict[str, Resource] = {}
ALIASES: dict[str, str] = {}
# Describers registered by name (`describe RESOURCE NAME` for a kind describe_cmd does not
# know); each prints and returns the exit code.
DESCRIBERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def register_resource(res: Resource | str, *more: Any) -> None:
    """Add a resource to `get`: register_resource(Resource(...), *aliases). The older form,
    (name, lister(client, args), tabler(items, wide) -> table text, *aliases), is still
    taken: its table's first line is the header and each further line a row."""
    aliases: tuple[str, ...] = more
    if isinstance(res, str):
        old_lister, old_tabler, *rest = more
        aliases = tuple(rest)
        res = Resource(
            res,
            aliases[0] if aliases else res.rstrip("s"),
            lambda c, a, sel: old_lister(c, a),
            lambda wide, with_ns: old_tabler([], wide).split("\n")[0].split(),
            lambda item, wide, with_ns: old_tabler([item], wide).split("\n")[1].split(),
            key=output.object_name,
            namespaced=True,
        )
    RESOURCES[res.name] = res
    for a in (res.kind, *aliases):
        ALIASES[a] = res.name


def register_describer(resource: str, describer: Callable[[argparse.Namespace], int]) -> None:
    """`katcall describe RESOURCE NAME` for a resource (its canonical name)."""
    DESCRIBERS[resource] = describer


def resource(name: str) -> Resource:
    resolved = ALIASES.get(name, name)
    if resolved not in RESOURCES:
        known = sorted(RESOURCES)
        close = difflib.get_close_matches(name, [*known, *ALIASES], n=1)
        hint = f"; did you mean {ALIASES.get(close[0], close[0])!r}?" if close else ""
        raise SystemExit(f"error: unknown resource type {name!r}{hint} (known: {', '.join(known)})")
    return RESOURCES[resolved]


def parse_selector(text: str) -> dict[str, str]:
    """`-l app=web,tier=front` -> {"app": "web", "tier": "front"} (equality only)."""
    sel: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip().removeprefix("=")  # "==" too
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"bad selector {part!r} (use key=value[,key=value])")
        sel[key] = value
    return sel


def labels_match(labels: Any, sel: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in sel.items())


# ------------------------------------------------------------------ get


def cmd_get(args: argparse.Namespace) -> int:
    res = resource(args.resource)
    fmt = output.check_format(args.output or "")
    sel: dict[str, str] = getattr(args, "selector", None) or {}
    if sel and not res.selectable:
        selectable = ", ".join(sorted(r.name for r in RESOURCES.values() if r.selectable))
        raise SystemExit(f"error: -l applies to {selectable}, not {res.name}")
    wide = fmt == "wide"
    with_ns = res.namespaced and bool(getattr(args, "all_namespaces", False))
    with connect(args) as client:
        items = res.lister(client, args, sel)
        if args.name:
            items = [i for i in items if res.name_of(i) == args.name]
            if not items and not getattr(args, "watch", False):
                raise CallError(f"{res.kind} {args.name!r} not found{_where(res, args)}")
        if getattr(args, "watch", False):
            if fmt not in ("", "wide"):
                raise SystemExit("error: --watch prints tables only (no -o json|yaml|name)")
            return watch.run(client, args, res, items, sel, wide=wide, with_ns=with_ns)
    if fmt and fmt != "wide":
        text = output.render(items, fmt, single=bool(args.name), kind=res.kind)
        print(text, end="" if text.endswith("\n") else "\n")
    elif items:
        print(print_table(res, items, wide, with_ns))
    else:
        print(f"No {res.name} found{_where(res, args)}.")
    return 0


def _where(res: Resource, args: argparse.Namespace) -> str:
    if not res.namespaced or getattr(args, "all_namespaces", False):
        return ""
    return f" in namespace {namespace(args)!r}"


def print_table(res: Resource, items: list[Item], wide: bool, with_ns: bool) -> str:
    text = output.table(res.headers(wide, with_ns), [res.row(i, wide, with_ns) for i in items])
    if res.notes is not None and not wide:
        text = "\n".join([text, *res.notes(items)])
    return text


# ------------------------------------------------------------------ cluster-scoped kinds


def _node_headers(wide: bool, with_ns: bool) -> list[str]:
    headers = ["NAME", "STATUS", "ROLES", "ADDRESS", "SUBNET", "LAST-HEARTBEAT"]
    wide_cols = ["OVERLAY", "CPU", "MEMORY", "VERSION", "LABELS", "TAINTS"]
    return headers + (wide_cols if wide else [])


def node_status(n: kat_pb2.Node) -> str:
    status = NODE_CONDITION(n.status.condition).removeprefix("CONDITION_")
    return status + (",SchedulingDisabled" if n.spec.unschedulable else "")


def node_roles(n: kat_pb2.Node) -> str:
    st = n.status
    roles = [r for r, on in (("leader", st.leader), ("etcd", st.etcd_member)) if on]
    return ",".join(roles or ["agent"])


def labels_text(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def taints_text(n: kat_pb2.Node) -> str:
    taints = [f"{t.key}={t.value}:{kat_pb2.Taint.Effect.Name(t.effect)}" for t in n.spec.taints]
    return ",".join(taints) or "<none>"


def _node_row(n: kat_pb2.Node, wide: bool, with_ns: bool) -> list[str]:
    st = n.status
    beat = st.last_heartbeat.seconds
    seen = output.age(time.time() - beat) + " ago" if beat else "never"
    row = [n.metadata.name, node_status(n), node_roles(n), st.advertise_address, st.subnet, seen]
    if wide:
        row += [
            overlay_view.summary(st.overlay),
            format_cpu(st.allocatable.cpu_millis),
            output.approx_memory(st.allocatable.memory_bytes),
            st.agent_version or "-",
            labels_text(n.metadata.labels),
            taints_text(n),
        ]
    return row


def _token_row(t: kat_pb2.JoinToken, wide: bool, with_ns: bool) -> list[str]:
    left = t.expires.seconds + t.expires.nanos / 1e9 - time.time()
    state = (
        "revoked" if t.revoked else ("expired" if left <= 0 else f"expires in {output.age(left)}")
    )
    uses = f"{t.uses}/{t.max_uses}" if t.max_uses else f"{t.uses}"
    scope = "etcd-member" if t.etcd_member else "worker"
    if t.approved_addresses:  # addresses a joining node may claim besides its source
        scope += " +" + ",".join(t.approved_addresses)
    return [t.id, state, uses, scope, t.description]


def _event_headers(wide: bool, with_ns: bool) -> list[str]:
    return (["NAMESPACE"] if with_ns else []) + ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]


def event_row(e: kat_pb2.Event, wide: bool = False, with_ns: bool = False) -> list[str]:
    row = [
        output.age(time.time() - e.timestamp.seconds),
        kat_pb2.Event.Type.Name(e.type).title(),
        e.reason,
        f"{e.object_kind.lower()}/{e.object_name}",
        e.message,
    ]
    return ([e.namespace or "-"] if with_ns else []) + row


def event_table(events: list[kat_pb2.Event]) -> str:
    return output.table(_event_headers(False, False), [event_row(e) for e in events])


def _namespace_row(n: kat_pb2.Namespace, wide: bool, with_ns: bool) -> list[str]:
    return [n.metadata.name, output.age(time.time() - n.metadata.creation_timestamp.seconds)]


def _list_nodes(c: Client, a: argparse.Namespace, sel: dict[str, str]) -> list[Item]:
    return list(c.list_nodes(kat_pb2.ListRequest(label_selector=sel)).items)


def _list_events(c: Client, a: argparse.Namespace, sel: dict[str, str]) -> list[Item]:
    return list(c.list_events(kat_pb2.ListEventsRequest(namespace=namespace(a))).items)


def _watch_events(c: Client, a: argparse.Namespace, sel: dict[str, str]) -> Iterator[Item]:
    stream = c.watch_events(kat_pb2.WatchRequest(namespace=namespace(a)))
    try:
        yield from stream
    finally:
        stream.cancel()


register_resource(
    Resource(
        "nodes",
        "node",
        _list_nodes,
        _node_headers,
        _node_row,
        key=output.object_name,
        selectable=True,
    ),
    "no",
)
register_resource(
    Resource(
        "tokens",
        "token",
        lambda c, a, s: list(c.list_tokens(kat_pb2.ListRequest()).items),
        lambda w, n: ["ID", "STATE", "USES", "SCOPE", "DESCRIPTION"],
        _token_row,
        key=lambda t: t.id,
        name_of=lambda t: t.id,
    ),
)
register_resource(
    Resource(
        "events",
        "event",
        _list_events,
        _event_headers,
        event_row,
        key=lambda e: e.id,
        name_of=lambda e: e.id,
        namespaced=True,
        watcher=_watch_events,
    ),
    "ev",
)
register_resource(
    Resource(
        "namespaces",
        "namespace",
        lambda c, a, s: list(c.list_namespaces(kat_pb2.ListRequest()).items),
        lambda w, n: ["NAME", "AGE"],
        _namespace_row,
        key=output.object_name,
    ),
    "ns",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "get",
        help="list resources (workloads, instances, nodes, namespaces, events, tokens)",
        description="List resources, or show one by NAME. -o json|yaml print every field "
        "(zero values too); -o name prints kind/name; -o jsonpath='{.items[*].metadata.name}' "
        "picks fields; -w keeps printing rows that change.",
    )
    p.add_argument("resource", metavar="RESOURCE")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument(
        "-l",
        "--selector",
        type=parse_selector,
        help="only items with these labels: key=value[,key=value] (workloads, instances, nodes)",
    )
    p.add_argument("-w", "--watch", action="store_true", help="print changes as they happen")
    p.add_argument("--since", default="", help="audit: only records newer than this (e.g. 1h)")
    p.set_defaults(func=cmd_get, late_positionals=("name",))
