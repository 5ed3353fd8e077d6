"""Turning katcall's global options into a connected client."""

from __future__ import annotations

import argparse

from internal.security import clientconfig
from katcall.client import Client


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--katconfig", help="client config file (default: $KATCONFIG or ~/.kat/config)"
    )
    parser.add_argument(
        "--context", help="cluster context to use (default: the config's current context)"
    )


def connect(args: argparse.Namespace) -> Client:
    path = clientconfig.resolve_path(getattr(args, "katconfig", None))
    ctx = clientconfig.load(path).context(getattr(args, "context", None))

    def remember(endpoints: list[str]) -> None:
        fresh = clientconfig.load(path)
        if ctx.name in fresh.contexts:
            fresh.contexts[ctx.name].endpoints = endpoints
            clientconfig.save(fresh, path)

    return Client(ctx, on_endpoints=remember)
