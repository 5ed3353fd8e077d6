"""katcall's global options and turning them into a connected client.

Global options (as kubectl's) are accepted before or after the command: the root parser
holds their defaults and every subcommand parser gets a copy whose default is SUPPRESS, so
a value given after the command lands in the same attribute and one given before is not
overwritten by the subcommand's default.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from internal.security import clientconfig
from katcall.client import Client
from katcall.failover import DEFAULT_REQUEST_TIMEOUT

OUTPUT_HELP = "output format: wide, json, yaml, name, jsonpath=EXPR (default: a table)"


# (flags, default on the root parser, extra add_argument keywords)
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], object, dict[str, object]]] = [
    (("--katconfig",), None, {"help": "client config file (default: $KATCONFIG or ~/.kat/config)"}),
    (("--context",), None, {"help": "cluster context to use (default: the config's current one)"}),
    (("-n", "--namespace"), "", {"help": "namespace (default: default)"}),
    (("-A", "--all-namespaces"), False, {"action": "store_true", "help": "all namespaces"}),
    (("-o", "--output"), "", {"help": OUTPUT_HELP, "metavar": "FORMAT"}),
    (
        ("--request-timeout",),
        DEFAULT_REQUEST_TIMEOUT,
        {
            "type": float,
            "metavar": "SECONDS",
            "help": "while no leader answers (a failover), keep retrying for this long"
            f" (default {DEFAULT_REQUEST_TIMEOUT:g})",
        },
    ),
]


def _global_options(parser: argparse.ArgumentParser, root: bool) -> None:
    have = parser._option_string_actions
    group = parser.add_argument_group("global options") if root else parser
    for flags, default, kw in GLOBAL_OPTIONS:
        if any(f in have for f in flags):
            continue  # the command defines it itself
        group.add_argument(*flags, default=default if root else argparse.SUPPRESS, **kw)  # type: ignore[arg-type]


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """Give the root parser and (call after all commands are registered) every subcommand
    the global options."""
    _global_options(parser, root=True)
    for child in _subparsers(parser):
        _global_options(child, root=False)


def add_global_options_to(parser: argparse.ArgumentParser) -> None:
    """The global options, without defaults, on a parser of its own (e.g. a late one)."""
    _global_options(parser, root=False)


def namespace(args: argparse.Namespace) -> str:
    """The request namespace: "*" with -A, else -n (default "default")."""
    if getattr(args, "all_namespaces", False):
        return "*"
    return getattr(args, "namespace", "") or "default"


def connect(args: argparse.Namespace) -> Client:
    path = clientconfig.resolve_path(getattr(args, "katconfig", None))
    ctx = clientconfig.load(path).context(getattr(args, "context", None))

    def remember(endpoints: list[str]) -> None:
        fresh = clientconfig.load(path)
        if ctx.name in fresh.contexts:
            fresh.contexts[ctx.name].endpoints = endpoints
            clientconfig.save(fresh, path)

    timeout = getattr(args, "request_timeout", DEFAULT_REQUEST_TIMEOUT)
    client = Client(ctx, on_endpoints=remember, request_timeout=timeout)
    from katcall.renew import renew_if_due

    renew_if_due(client, path)  # an admin certificate renews itself when used
    return client
