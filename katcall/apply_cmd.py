"""`katcall apply -f DIR|FILE [--dry-run] [--wait] [--timeout 5m]`.

The bundle is packed the same way `katcall validate` checks it
(internal/manifests/bundle.py) and sent to the leader, which validates it again,
stores it and answers at once. `--wait` then follows
the workload's status until the rollout is done (every desired instance RUNNING and ready, or
the job run SUCCEEDED), printing a progress line whenever it changes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from api.v1alpha1 import kat_pb2
from internal.manifests import bundle, resources
from katcall.client import CallError, Client
from katcall.session import connect
from katcall.token_cmd import parse_duration

DEFAULT_TIMEOUT = "5m"
_Inst = kat_pb2.Instance


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "apply",
        help="send a bundle directory or .kat file to the cluster",
        description="Apply a Quadlet bundle (a directory, or a .tar.gz), a single .kat file "
        "(e.g. a namespace.kat) or, with -f -, either from stdin. Prints what changed; "
        "--wait follows the rollout. A bundle that leaves out a file the stored revision "
        "has (e.g. VirtualLoadBalancer.kat) is refused unless --prune says to remove it.",
    )
    p.add_argument(
        "-f", "--filename", dest="path", required=True, metavar="PATH", help="what to apply"
    )
    p.add_argument("--dry-run", action="store_true", help="validate and show changes only")
    p.add_argument("--wait", action="store_true", help="follow the rollout until it is done")
    p.add_argument(
        "--prune",
        action="store_true",
        help="remove bundle files (e.g. VirtualLoadBalancer.kat) the bundle no longer has",
    )
    p.add_argument(
        "--timeout",
        type=parse_duration,
        default=parse_duration(DEFAULT_TIMEOUT),
        help=f"how long --wait waits (default {DEFAULT_TIMEOUT})",
    )
    p.set_defaults(func=run)


class Refused(Exception):
    """Nothing sent: the message says why, as one or more lines."""


def _invalid(label: str, problems: list[str]) -> Refused:
    noun = "problem" if len(problems) == 1 else "problems"
    lines = [f"error: {label} is invalid ({len(problems)} {noun}):"]
    return Refused("\n".join(lines + [f"  {p}" for p in problems]))


def _pack_one(data: bytes, label: str) -> bytes:
    """One file's bytes as a bundle; a file katcall cannot place (bad YAML, unknown kind)
    is reported as `validate` reports it, with line and column."""
    if data.startswith(b"\x1f\x8b"):
        return data  # already a .tar.gz bundle
    name = Path(label).name
    if name in bundle.BUNDLE_FILE_NAMES:
        return bundle.pack_files({name: data})
    msg, problems = resources.parse_file(data, label)
    if problems or msg is None:
        raise _invalid(label, [str(p) for p in problems])
    # Its kind names its bundle file (pack_file's rule; a cluster.kat is the leader's to refuse).
    return bundle.pack_files({bundle.file_for_kind(msg.kind) or name: data})


def read_bundle(path: str) -> bytes:
    """What `apply -f PATH` sends: a directory packed, a file or stdin (`-`) as a bundle."""
    if path == "-":
        data = sys.stdin.buffer.read(bundle.DEFAULT_LIMITS.max_compressed + 1)
        if len(data) > bundle.DEFAULT_LIMITS.max_compressed:
            raise Refused("error: stdin is larger than a bundle may be")
        return _pack_one(data, "<stdin>")
    p = Path(path)
    if p.is_dir():
        return bundle.pack_dir(p)
    with p.open("rb") as f:
        data = f.read(bundle.DEFAULT_LIMITS.max_compressed + 1)
    return _pack_one(data, path)


_OPTIONAL_FILES = {
    "VirtualLoadBalancer.kat": "virtual_load_balancer",
    "JobDefinition.kat": "job_definition",
    "BuildDefinition.kat": "build_definition",
}


def files_removed(client: Client, data: bytes) -> tuple[str, list[str], int]:
    """(workload, files the stored revision has that `data` lacks, that revision)."""
    try:
        payload = resources.load_apply_payload(bundle.unpack(data))
    except (resources.ValidationError, bundle.BundleError):
        return "", [], 0  # the leader says what is wrong with it
    if not isinstance(payload, kat_pb2.Bundle) or not payload.HasField("workload"):
        return "", [], 0
    meta = payload.workload.metadata
    ref = kat_pb2.ObjectRef(namespace=meta.namespace or "default", name=meta.name)
    try:
        revisions = list(client.list_revisions(ref).items)
    except CallError:
        return meta.name, [], 0
    if not revisions:
        return meta.name, [], 0
    stored = max(revisions, key=lambda r: r.revision)
    gone = [
        f
        for f, field in _OPTIONAL_FILES.items()
        if stored.bundle.HasField(field) and not payload.HasField(field)  # type: ignore[arg-type]
    ]
    return meta.name, gone, stored.revision


def run(args: argparse.Namespace) -> int:
    try:
        data = read_bundle(args.path)
    except Refused as exc:
        print(exc, file=sys.stderr)
        return 1
    except bundle.BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with connect(args) as client:
        name, gone, revision = files_removed(client, data)
        if gone and not args.prune:
            print(
                f"error: applying {args.path} would remove {', '.join(gone)} from workload/"
                f"{name} (revision {revision} has it); add the file to the bundle, or pass "
                "--prune to remove it",
                file=sys.stderr,
            )
            return 1
        try:
            resp = client.apply(kat_pb2.ApplyRequest(bundle=data, dry_run=args.dry_run))
        except CallError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                print(_invalid(args.path, str(exc).splitlines()), file=sys.stderr)
                return 1
            raise
        print_result(resp, args.dry_run)
        for f in gone:
            print(f"  {f} {'would be ' if args.dry_run else ''}pruned")
        if not args.wait or args.dry_run or not resp.HasField("workload"):
            return 0
        return wait_for_rollout(client, resp.workload, args.timeout)


def print_result(resp: kat_pb2.ApplyResponse, dry_run: bool) -> None:
    if resp.HasField("namespace") and not resp.HasField("workload"):
        what = f"namespace/{resp.namespace.metadata.name}"
    else:
        meta = resp.workload.metadata
        what = f"workload/{meta.name}"
        if meta.namespace and meta.namespace != "default":
            what += f" -n {meta.namespace}"
    verb = "created" if resp.created else ("configured" if resp.changed else "unchanged")
    if dry_run:
        verb = f"would be {verb} (dry run)" if resp.changed else "unchanged (dry run)"
    gen = ""
    if resp.HasField("workload") and resp.changed:
        gen = f" (generation {resp.workload.metadata.generation})"
    print(f"{what} {verb}{gen}")
    if resp.changed and (dry_run or not resp.created):
        for line in resp.changes:
            print(f"  {line}")


# ------------------------------------------------------------------ --wait


def progress_line(w: kat_pb2.Workload) -> str:
    st = w.status
    name = w.metadata.name
    if w.spec.type == kat_pb2.WorkloadSpec.JOB:
        cond = {c.type: c for c in st.conditions}
        for kind in ("Complete", "Failed", "Progressing"):
            c = cond.get(kind)
            if c is not None and c.message:
                return f"{name}: {c.message}"
        return f"{name}: waiting for the job to start"
    desired = st.desired_instances
    line = f"{name}: {st.ready_instances}/{desired} ready, {st.updated_instances}/{desired} updated"
    alive = [i for i in st.instances if i.phase != _Inst.TERMINATING]
    stopping = len(st.instances) - len(alive)
    old = sum(1 for i in alive if i.generation != st.template_generation)
    if old:
        line += f", {old} old"
    if stopping:
        line += f", {stopping} stopping"
    pending = [i for i in alive if i.phase == _Inst.PENDING]
    if pending:
        line += f"; {len(pending)} pending: {pending[0].message}"
    else:
        stuck = [i for i in alive if not i.ready and i.message]
        if stuck:
            line += f"; {stuck[0].id}: {stuck[0].message}"
    return line


def rollout_outcome(w: kat_pb2.Workload, generation: int) -> tuple[bool, str] | None:
    """(succeeded, why) once the rollout of `generation` is over, else None."""
    st = w.status
    if st.observed_generation < generation:
        return None
    cond = {c.type: c for c in st.conditions}
    if w.spec.type == kat_pb2.WorkloadSpec.JOB:
        if not any(i.generation >= generation for i in st.instances):
            return None  # no run of this generation yet (a scheduled job waits for its tick)
        done = cond.get("Complete")
        if done is not None and done.status == "True":
            return True, done.message
        failed = cond.get("Failed")
        if failed is not None and failed.status == "True":
            return False, f"job failed: {failed.message}"
        return None
    halted = cond.get("RolloutHalted")
    if halted is not None and halted.status == "True":
        return False, halted.message
    current = st.template_generation or generation
    for inst in st.instances:
        if inst.generation == current and inst.phase == _Inst.FAILED:
            return False, f"instance {inst.id} FAILED on node {inst.node}: {inst.message}"
    progressing = cond.get("Progressing")
    if progressing is not None and progressing.reason == "RolloutComplete":
        # Belt and braces: success only when the desired number of instances of the
        # current generation are ready, whatever the condition says.
        alive = [i for i in st.instances if i.phase != _Inst.TERMINATING]
        ready = sum(1 for i in alive if i.generation == current and i.ready)
        desired = st.desired_instances
        if w.spec.type == kat_pb2.WorkloadSpec.SERVICE:
            desired = max(desired, w.spec.replicas)
        if all(i.generation == current for i in alive) and ready >= desired:
            return True, progressing.message
    return None


def follow(
    events: Iterable[kat_pb2.WorkloadWatchEvent],
    namespace: str,
    name: str,
    generation: int,
    emit: Callable[[str], None],
) -> tuple[bool, str]:
    """Read watch events until the rollout of the workload is over."""
    last = ""
    for ev in events:
        w = ev.workload
        if w.metadata.namespace != namespace or w.metadata.name != name:
            continue
        if ev.type == kat_pb2.WorkloadWatchEvent.DELETE:
            return False, f"workload {namespace}/{name} was deleted"
        line = progress_line(w)
        if line != last:
            emit(line)
            last = line
        outcome = rollout_outcome(w, generation)
        if outcome is not None:
            return outcome
    return False, "the watch ended"


def wait_for_rollout(client: Client, applied: kat_pb2.Workload, timeout: float) -> int:
    meta = applied.metadata
    deadline = time.monotonic() + timeout
    start_text = time.monotonic()
    last_line = [""]

    def emit(line: str) -> None:
        last_line[0] = line
        print(line, flush=True)

    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        stream = client.watch_workloads(
            kat_pb2.WatchRequest(namespace=meta.namespace), timeout=left
        )
        try:
            ok, why = follow(stream, meta.namespace, meta.name, meta.generation, emit)
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                break
            if code == grpc.StatusCode.UNAVAILABLE:
                time.sleep(1.0)  # leader change: watch again from the current state
                continue
            print(f"error: {err.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
        finally:
            stream.cancel()
        if ok:
            took = time.monotonic() - start_text
            print(f"{meta.name}: rollout complete in {took:.1f}s ({why})")
            return 0
        print(f"error: {meta.name}: {why}", file=sys.stderr)
        return 1
    shown = f" ({last_line[0]})" if last_line[0] else ""
    print(f"error: timed out after {timeout:g}s waiting for {meta.name}{shown}", file=sys.stderr)
    return 1
