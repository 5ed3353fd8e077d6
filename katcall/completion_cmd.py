"""`katcall completion bash|zsh|fish`: shell completion from argcomplete.

The script argcomplete prints calls katcall back with `_ARGCOMPLETE` set; `main` then hands
the parser to argcomplete, which completes commands and options from argparse itself and,
through the completers attached here, names from the cluster: resource types, and the
names of workloads, instances, nodes and namespaces (a short call with the current
context; nothing is offered when the cluster does not answer).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from katcall import get_cmd
from katcall.session import connect

SHELLS = ("bash", "zsh", "fish")

# Which resource a positional or option names, by its dest.
_DEST_RESOURCE = {"node": "nodes", "workload": "workloads", "namespace": "namespaces"}


def active() -> bool:
    return "_ARGCOMPLETE" in os.environ


def _names(fixed: str | None) -> Callable[..., list[str]]:
    def complete(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
        kind = fixed or getattr(parsed_args, "resource", "") or ""
        try:
            res = get_cmd.resource(kind)
            with connect(parsed_args) as client:
                items = res.lister(client, parsed_args, {})
        except (SystemExit, Exception):  # completion never fails loudly
            return []
        return sorted(n for n in map(res.name_of, items) if n.startswith(prefix))

    return complete


def _resource_types(prefix: str, **_: Any) -> list[str]:
    return sorted(n for n in {*get_cmd.RESOURCES, *get_cmd.ALIASES} if n.startswith(prefix))


def attach(parser: argparse.ArgumentParser) -> None:
    """Give every parser's resource/name/node/workload/namespace arguments completers."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                attach(child)
        elif action.dest == "resource":
            action.completer = _resource_types  # type: ignore[attr-defined]
        elif action.dest == "name" and "resource" in {a.dest for a in parser._actions}:
            action.completer = _names(None)  # type: ignore[attr-defined]
        elif action.dest in _DEST_RESOURCE:
            action.completer = _names(_DEST_RESOURCE[action.dest])  # type: ignore[attr-defined]


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer a completion request from the shell (exits) when there is one."""
    if not active():
        return
    import argcomplete

    attach(parser)
    argcomplete.autocomplete(parser)


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["katcall"], shell=args.shell))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description="Print the completion script for a shell; load it with e.g. "
        "`source <(katcall completion bash)` or put it in ~/.bashrc.",
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=cmd_completion)
