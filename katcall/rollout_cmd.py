"""`katcall rollout status|history|undo|restart workload NAME`, as kubectl's.

- status: waits as `apply --wait` does (apply_cmd.wait_for_rollout): success only when every
  desired instance of the current generation is ready; exit 1 when the rollout halts or
  fails, or at --timeout.
- history: the stored revisions (the newest 10) with time, actor, image and change cause
  (the kat.dws.rip/change-cause annotation if the applied workload had one, else what
  changed); `--revision N` prints that revision's workload.
- undo [--to-revision N]: the same as `katcall rollback workload NAME`.
- restart: a new generation with the same spec, so the instances are replaced by a
  rolling update; prior revisions stay available to undo.
Each of undo and restart takes --wait (and --timeout) to follow the rollout it starts.
"""

from __future__ import annotations

import argparse

from api.v1alpha1 import kat_pb2
from katcall import output
from katcall.apply_cmd import DEFAULT_TIMEOUT, wait_for_rollout
from katcall.client import CallError, Client
from katcall.session import connect
from katcall.token_cmd import parse_duration

WORKLOAD_KINDS = ("workload", "workloads", "wl")


def target(kind: str, name: str | None) -> str:
    """NAME from `workload NAME` or `workload/NAME`."""
    kind_part, slash, rest = kind.partition("/")
    if kind_part not in WORKLOAD_KINDS:
        raise CallError(
            f"rollout applies to workloads, not {kind_part!r} (katcall rollout ... workload NAME)"
        )
    if slash and rest and not name:
        return rest
    if not name:
        raise CallError("name the workload: katcall rollout ... workload NAME")
    return name


def _ref(args: argparse.Namespace) -> kat_pb2.ObjectRef:
    return kat_pb2.ObjectRef(
        namespace=args.namespace or "default", name=target(args.kind, args.name)
    )


def finish(client: Client, w: kat_pb2.Workload, args: argparse.Namespace) -> int:
    """--wait: follow the rollout of `w`'s generation."""
    if not getattr(args, "wait", False):
        return 0
    return wait_for_rollout(client, w, args.timeout)


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as client:
        w = client.get_workload(_ref(args))
        print(f"workload/{w.metadata.name}: waiting for generation {w.metadata.generation}")
        return wait_for_rollout(client, w, args.timeout)


def history_rows(
    revisions: list[kat_pb2.WorkloadRevision], current: int
) -> tuple[list[str], list[list[str]]]:
    headers = ["REVISION", "CREATED", "BY", "IMAGE", "CHANGE-CAUSE"]
    rows = []
    for r in revisions:
        mark = " (current)" if r.revision == current else ""
        src = r.bundle.workload.spec.source
        image = src.image or (f"git:{src.git.repository}" if src.HasField("git") else "")
        created = r.created.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append([f"{r.revision}{mark}", created, r.created_by, image, r.change_cause or "-"])
    return headers, rows


def cmd_history(args: argparse.Namespace) -> int:
    ref = _ref(args)
    with connect(args) as client:
        w = client.get_workload(ref)
        revisions = list(client.list_revisions(ref).items)
    if args.revision:
        chosen = [r for r in revisions if r.revision == args.revision]
        if not chosen:
            kept = ", ".join(str(r.revision) for r in revisions) or "none"
            raise CallError(f"revision {args.revision} of {ref.name} not found (kept: {kept})")
        print(output.render([chosen[0]], args.output or "yaml", single=True))
        return 0
    fmt = output.check_format(args.output or "", ("json", "yaml", "jsonpath=EXPR"))
    if fmt:
        print(output.render(revisions, fmt))
        return 0
    headers, rows = history_rows(revisions, w.metadata.generation)
    print(f"workload/{ref.name}")
    print(output.table(headers, rows))
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    ref = _ref(args)
    with connect(args) as client:
        req = kat_pb2.RollbackRequest(
            namespace=ref.namespace, name=ref.name, to_revision=args.to_revision
        )
        w = client.rollback_workload(req)
        print(f"workload/{ref.name} rolled back (now generation {w.metadata.generation})")
        return finish(client, w, args)


def cmd_restart(args: argparse.Namespace) -> int:
    ref = _ref(args)
    with connect(args) as client:
        w = client.restart_workload(ref)
        print(f"workload/{ref.name} restarted (now generation {w.metadata.generation})")
        return finish(client, w, args)


def add_wait(p: argparse.ArgumentParser, always: bool = False) -> None:
    if not always:
        p.add_argument("--wait", action="store_true", help="follow the rollout until it is done")
    p.add_argument(
        "--timeout",
        type=parse_duration,
        default=parse_duration(DEFAULT_TIMEOUT),
        help=f"how long to wait (default {DEFAULT_TIMEOUT})",
    )


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="workload", help="workload (or workload/NAME)")
    p.add_argument("name", nargs="?", metavar="NAME")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rollout",
        help="follow, list, undo or restart a workload's rollouts",
        description="Manage a workload's rollouts: status waits until the current generation "
        "is fully ready; history lists revisions; undo returns to an earlier one; restart "
        "replaces every instance by a rolling update without a spec change.",
    )
    rsub = p.add_subparsers(dest="rollout_cmd", metavar="SUBCOMMAND", required=True)
    st = rsub.add_parser("status", help="wait until the current generation is rolled out")
    _target_args(st)
    add_wait(st, always=True)
    st.set_defaults(func=cmd_status, late_positionals=("name",))
    hi = rsub.add_parser("history", help="revisions with time, actor, image and change cause")
    _target_args(hi)
    hi.add_argument("--revision", type=int, default=0, help="print this revision's workload")
    hi.set_defaults(func=cmd_history, late_positionals=("name",))
    un = rsub.add_parser("undo", help="return to the previous (or a given) revision")
    _target_args(un)
    un.add_argument(
        "--to-revision", type=int, default=0, help="revision to return to (default: the previous)"
    )
    add_wait(un)
    un.set_defaults(func=cmd_undo, late_positionals=("name",))
    rs = rsub.add_parser("restart", help="replace every instance, one rolling update")
    _target_args(rs)
    add_wait(rs)
    rs.set_defaults(func=cmd_restart, late_positionals=("name",))
