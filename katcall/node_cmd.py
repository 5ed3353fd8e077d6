"""`katcall cordon|uncordon NODE`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from api.v1alpha1 import kat_pb2
from katcall.session import connect


def _set(cordon: bool, verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with connect(args) as client:
            req = kat_pb2.NodeRequest(name=args.node)
            if cordon:
                client.cordon_node(req)
            else:
                client.uncordon_node(req)
        print(f"node/{args.node} {verb}")
        return 0

    return run


def cmd_drain(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.drain_node(
            kat_pb2.DrainRequest(name=args.node, timeout_seconds=args.timeout),
            timeout=args.timeout + 15,
        )
    print(f"node/{args.node} drained")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.remove_node(kat_pb2.NodeRequest(name=args.node))
    print(f"node/{args.node} removed")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.backup(kat_pb2.BackupRequest(), timeout=300)
    print(f"snapshot {resp.path} ({resp.size_bytes} bytes) written on the leader")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("drain", help="cordon a node and move its instances elsewhere")
    d.add_argument("node")
    d.add_argument(
        "--timeout", type=int, default=120, help="seconds to wait for it to empty (0: do not wait)"
    )
    d.set_defaults(func=cmd_drain)
    node = sub.add_parser("node", help="node membership")
    nsub = node.add_subparsers(dest="node_cmd", required=True)
    rm = nsub.add_parser("remove", help="remove a node (and its etcd member) from the cluster")
    rm.add_argument("node")
    rm.set_defaults(func=cmd_remove)
    b = sub.add_parser("backup", help="take an etcd snapshot on the leader now")
    b.set_defaults(func=cmd_backup)
    for name, cordon, verb, help_ in (
        ("cordon", True, "cordoned", "stop scheduling onto a node"),
        ("uncordon", False, "uncordoned", "allow scheduling onto a node again"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("node")
        p.set_defaults(func=_set(cordon, verb))
