"""`katcall`: the KAT command line.

Each command group lives in its own module exposing `register(subparsers)`; the module adds
its parser(s) and sets `func`, a callable taking the parsed arguments and returning the exit
code. Errors go to stderr as one clear line per problem; exit code 0 only on success.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from internal.security.clientconfig import ConfigError
from katcall.client import CallError
from katcall.session import add_global_options

# Command modules, in the order they appear in `katcall --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "katcall.validate_cmd",
    "katcall.apply_cmd",
    "katcall.get_cmd",
    "katcall.workload_cmd",
    "katcall.node_cmd",
    "katcall.token_cmd",
    "katcall.config_cmd",
    "katcall.audit_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="katcall",
        description="Command line for KAT, a small container orchestrator.",
    )
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CallError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output closed early (e.g. `| head`); keep Python from complaining at exit.
        sys.stderr.close()
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
