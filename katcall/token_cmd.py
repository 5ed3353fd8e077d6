"""`katcall token create|list|revoke`."""

from __future__ import annotations

import argparse
import re

from api.v1alpha1 import kat_pb2
from katcall import get_cmd
from katcall.session import connect

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    m = _DURATION.match(text.strip())
    if not m or int(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (use e.g. 30m, 24h, 7d)")
    return int(m[1]) * _UNIT[m[2]]


def cmd_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.create_token(
            kat_pb2.CreateTokenRequest(
                ttl_seconds=args.ttl,
                max_uses=args.max_uses,
                description=args.description,
                etcd_member=args.etcd_member,
                approved_addresses=args.address,
            ),
        )
    if args.quiet:
        print(resp.join_token)
    else:
        print(f"token {resp.token.id} expires {resp.token.expires.ToJsonString()}")
        member = " --etcd-member" if args.etcd_member else ""
        print(
            f"join with: kat-agent join --leader <leader-address> --token {resp.join_token}"
            + member
        )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.revoke_token(kat_pb2.RevokeTokenRequest(id=args.id))
    print(f"token {args.id} revoked")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    args.resource, args.name, args.selector, args.watch = "tokens", None, None, False
    return get_cmd.cmd_get(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="create, list and revoke join tokens")
    tsub = p.add_subparsers(dest="token_cmd", required=True)
    c = tsub.add_parser("create", help="create a join token (shown once)")
    c.add_argument(
        "--ttl", type=parse_duration, default=0, help="lifetime, e.g. 30m, 24h (default 24h)"
    )
    c.add_argument(
        "--max-uses", type=int, default=0, help="how many joins it allows (default: unlimited)"
    )
    c.add_argument("--description", default="")
    c.add_argument(
        "--etcd-member",
        action="store_true",
        help="the token may also add an etcd member (default: it joins workers only)",
    )
    c.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="IP|CIDR",
        help="an address a node joining with this token may advertise besides the source "
        "address of its join (a node behind NAT); repeatable",
    )
    c.add_argument("-q", "--quiet", action="store_true", help="print only the token")
    c.set_defaults(func=cmd_create)
    ls = tsub.add_parser("list", help="list tokens (never their secrets)")
    ls.set_defaults(func=cmd_list)
    r = tsub.add_parser("revoke", help="revoke a token by id")
    r.add_argument("id")
    r.set_defaults(func=cmd_revoke)
