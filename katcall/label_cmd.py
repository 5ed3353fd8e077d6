"""`katcall label node NODE key=value ... key- ...` (kubectl style)."""

from __future__ import annotations

import argparse

from api.v1alpha1 import kat_pb2
from katcall.session import connect


class LabelError(ValueError):
    pass


def parse_changes(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """`k=v` sets, `k-` removes; anything else is an error."""
    set_: dict[str, str] = {}
    remove: list[str] = []
    for item in items:
        if "=" in item:
            key, _, value = item.partition("=")
            if not key:
                raise LabelError(f"{item!r}: the label key is empty")
            set_[key] = value
        elif item.endswith("-") and len(item) > 1:
            remove.append(item[:-1])
        else:
            raise LabelError(f"{item!r}: write key=value to set a label or key- to remove one")
    both = sorted(set(set_) & set(remove))
    if both:
        raise LabelError(f"label {both[0]!r} is both set and removed")
    return set_, remove


def cmd_label(args: argparse.Namespace) -> int:
    try:
        set_, remove = parse_changes(args.changes)
    except LabelError as exc:
        raise SystemExit(f"error: {exc}") from None
    with connect(args) as client:
        client.label_node(kat_pb2.LabelNodeRequest(name=args.node, set=set_, remove=remove))
    print(f"node/{args.node} labeled")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="set or remove labels of a node (key=value, key-)")
    kinds = p.add_subparsers(dest="label_kind", required=True)
    n = kinds.add_parser("node", help="label a node")
    n.add_argument("node")
    n.add_argument("changes", nargs="+", metavar="key=value|key-")
    n.set_defaults(func=cmd_label)
