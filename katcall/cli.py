"""`katcall`: the KAT command line.

Each command group lives in its own module exposing `register(subparsers)`; the module adds
its parser(s) and sets `func`, a callable taking the parsed arguments and returning the exit
code. Errors go to stderr as one clear line per problem; exit code 0 only on success.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from internal.security.clientconfig import ConfigError
from katcall import completion_cmd
from katcall.client import CallError
from katcall.output import OutputError
from katcall.session import add_global_options

# Command modules, in the order they register.
COMMAND_MODULES: tuple[str, ...] = (
    "katcall.validate_cmd",
    "katcall.apply_cmd",
    "katcall.get_cmd",
    "katcall.workload_cmd",
    "katcall.rollout_cmd",
    "katcall.top_cmd",
    "katcall.describe_cmd",
    "katcall.logs_cmd",
    "katcall.node_cmd",
    "katcall.label_cmd",
    "katcall.ingress_cmd",
    "katcall.ingress_cert_cmd",
    "katcall.token_cmd",
    "katcall.admin_cmd",
    "katcall.config_cmd",
    "katcall.audit_cmd",
    "katcall.certs_cmd",
    "katcall.info_cmd",
    "katcall.completion_cmd",
)

# `katcall --help` groups commands as kubectl's help does; a command not listed here
# (a new module) shows under "Other commands".
HELP_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Basic commands", ("get", "create", "delete", "validate")),
    ("Deploy commands", ("apply", "rollout", "rollback")),
    (
        "Cluster management commands",
        ("cluster-info", "top", "cordon", "uncordon", "drain", "label", "node", "token"),
    ),
    ("Troubleshooting and debugging commands", ("describe", "logs", "exec")),
    ("Settings commands", ("config", "completion", "version")),
    ("Backup and access commands", ("backup", "admin")),
)

_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class KatParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Suggest the closest command for a mistyped one instead of listing all."""
        m = _INVALID_CHOICE.search(message)
        if m:
            choices = re.findall(r"'([^']*)'", m[2])
            close = difflib.get_close_matches(m[1], choices, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            message = f"unknown command {m[1]!r}{hint} (see `{self.prog} --help`)"
        super().error(message)


def _grouped_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> str:
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    listed = {name for _, names in HELP_GROUPS for name in names}
    groups = [(title, [n for n in names if n in helps]) for title, names in HELP_GROUPS]
    groups.append(("Other commands", [n for n in helps if n not in listed]))
    width = max(len(n) for n in helps) + 2
    out = ["Command line for KAT, a small container orchestrator."]
    for title, names in groups:
        if names:
            out += ["", f"{title}:"] + [f"  {n.ljust(width)}{helps[n]}" for n in names]
    out += ["", "Global options (-n, -A, -o, --context, --katconfig) go before or after"]
    out += ["the command, e.g. `katcall get workloads -n team web -o yaml`."]
    return "\n".join(out)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, also taking an optional positional given after options, as kubectl does
    (`get workloads -n team web`): argparse has already passed over such a positional (as
    absent) when it meets the options, so a command lists them in `late_positionals`."""
    args, extras = parser.parse_known_args(argv)
    for dest in getattr(args, "late_positionals", ()):
        if getattr(args, dest, None) is None and extras and not extras[0].startswith("-"):
            setattr(args, dest, extras.pop(0))
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = KatParser(
        prog="katcall",
        usage="katcall [global options] COMMAND [ARGS...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    parser.description = _grouped_commands(sub)
    sub.help = argparse.SUPPRESS  # listed, grouped, in the description instead
    add_global_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    completion_cmd.complete(parser)  # answers the shell and exits when it asks
    args = parse(parser, argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CallError, ConfigError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output closed early (e.g. `| head`); keep Python from complaining at exit.
        sys.stderr.close()
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
