"""Turning katcall's global options into a connected client."""

from __future__ import annotations

import argparse

from internal.security import clientconfig
from katcall.client import Client
from katcall.failover import DEFAULT_REQUEST_TIMEOUT


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--katconfig", help="client config file (default: $KATCONFIG or ~/.kat/config)"
    )
    parser.add_argument(
        "--context", help="cluster context to use (default: the config's current context)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT,
        metavar="SECONDS",
        help="while no leader answers (a failover), keep retrying for this long"
        f" (default {DEFAULT_REQUEST_TIMEOUT:g})",
    )


def connect(args: argparse.Namespace) -> Client:
    path = clientconfig.resolve_path(getattr(args, "katconfig", None))
    ctx = clientconfig.load(path).context(getattr(args, "context", None))

    def remember(endpoints: list[str]) -> None:
        fresh = clientconfig.load(path)
        if ctx.name in fresh.contexts:
            fresh.contexts[ctx.name].endpoints = endpoints
            clientconfig.save(fresh, path)

    timeout = getattr(args, "request_timeout", DEFAULT_REQUEST_TIMEOUT)
    return Client(ctx, on_endpoints=remember, request_timeout=timeout)
