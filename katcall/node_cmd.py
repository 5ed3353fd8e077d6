"""`katcall cordon|uncordon NODE`."""

from __future__ import annotations

import argparse

from api.v1alpha1 import kat_pb2
from katcall.session import connect


def _set(method: str, verb: str) -> object:
    def run(args: argparse.Namespace) -> int:
        client = connect(args)
        try:
            client.call(method, kat_pb2.NodeRequest(name=args.node))
        finally:
            client.close()
        print(f"node/{args.node} {verb}")
        return 0

    return run


def register(sub: argparse._SubParsersAction) -> None:
    for name, method, verb, help_ in (
        ("cordon", "CordonNode", "cordoned", "stop scheduling onto a node"),
        ("uncordon", "UncordonNode", "uncordoned", "allow scheduling onto a node again"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("node")
        p.set_defaults(func=_set(method, verb))
