"""`kat-agent`: init, join, backup, certificate."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import signal
import sys
from pathlib import Path

from internal.observability.logs import quiet_grpc_core_logging, setup_logging

quiet_grpc_core_logging(sys.argv)  # before anything imports grpc

from kat_agent.daemon import (  # noqa: E402 - after gRPC's logging is configured
    NodeOptions,
    StartupError,
    backup_now,
    run_init,
    run_join,
)

DEFAULT_DATA_DIR = Path("/var/lib/kat")


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"bad label {part!r} (use key=value,key2=value2)")
        labels[key] = value
    return labels


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default /var/lib/kat")
    p.add_argument(
        "--advertise-address", default="", help="this node's address (default: the default route's)"
    )
    p.add_argument("--node-name", default="", help="requested node name (default: the hostname)")
    p.add_argument("--labels", type=parse_labels, default={}, help="node labels, k=v,k2=v2")
    p.add_argument(
        "--rootless",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each workload as its own user with rootless Podman (the default; "
        "--no-rootless or env KAT_ROOTLESS=0: all workloads in root's Podman)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="write the log here (0600, rotated at 20 MiB, 5 kept) instead of stderr",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kat-agent", description="KAT node agent")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="start a new cluster on this node (or resume it)")
    init.add_argument("--config", type=Path, help="cluster.kat (read once, on a new data dir)")
    init.add_argument("--etcd-binary", default=None, help="etcd executable (default: etcd on PATH)")
    init.add_argument(
        "--restore-from",
        type=Path,
        default=None,
        help="start from an etcd snapshot (fresh data dir; needs --cluster-secret-file)",
    )
    init.add_argument(
        "--cluster-secret-file",
        type=Path,
        default=None,
        help="with --restore-from: the cluster secret (a member's <data-dir>/pki/cluster-secret)",
    )
    _common(init)
    join = sub.add_parser("join", help="join this node to a cluster (or resume it)")
    join.add_argument("--leader", required=True, help="leader address, host:port")
    tok = join.add_mutually_exclusive_group(required=True)
    tok.add_argument("--token", help="join token from `katcall token create`")
    tok.add_argument(
        "--token-file",
        type=Path,
        help="file holding the join token (keeps it out of the process list; make it 0600)",
    )
    join.add_argument(
        "--etcd-member", action="store_true", help="also run an etcd member (for HA: 3 or 5 in all)"
    )
    join.add_argument("--etcd-binary", default=None, help="etcd executable (default: etcd on PATH)")
    _common(join)
    backup = sub.add_parser("backup", help="write an etcd snapshot of this member now")
    backup.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    backup.add_argument("--output", type=Path, default=None, help="file (default: in backupPath)")
    backup.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    backup.add_argument("--log-format", default="text", choices=["text", "json"])
    inst = sub.add_parser(
        "install", help="write a systemd unit for `kat-agent init|join ...`, enable and start it"
    )
    inst.add_argument("agent_args", nargs=argparse.REMAINDER, help="init|join and its options")
    inst.add_argument("--unit-dir", type=Path, default=None, help=argparse.SUPPRESS)
    inst.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    inst.add_argument("--log-format", default="text", choices=["text", "json"])
    uninst = sub.add_parser(
        "uninstall", help="remove the unit and the workload users KAT made (--purge: data dir too)"
    )
    uninst.add_argument("--purge", action="store_true", help="also delete the data directory")
    uninst.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    uninst.add_argument("--unit-dir", type=Path, default=None, help=argparse.SUPPRESS)
    uninst.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    uninst.add_argument("--log-format", default="text", choices=["text", "json"])
    cert = sub.add_parser(
        "certificate", help="issue a client certificate (e.g. for Prometheus) from the cluster CA"
    )
    cert.add_argument("name", help="the certificate's common name, e.g. prometheus")
    cert.add_argument("--role", default="monitoring", choices=["monitoring", "admin"])
    cert.add_argument("--out-dir", type=Path, required=True, help="writes ca.crt, NAME.crt/.key")
    cert.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    cert.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    cert.add_argument("--log-format", default="text", choices=["text", "json"])
    return parser


async def _run(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    if args.command in ("install", "uninstall"):
        from kat_agent import install as inst

        unit_dir = args.unit_dir or inst.UNIT_DIR
        try:
            if args.command == "install":
                print(inst.install(list(args.agent_args), unit_dir))
            else:
                print(
                    "\n".join(inst.uninstall(args.data_dir, args.purge, unit_dir))
                    or "nothing to do"
                )
        except inst.InstallError as exc:
            raise StartupError(str(exc)) from None
        return
    if args.command == "certificate":
        from kat_agent import credentials as cr

        try:
            pair, ca_pem = cr.client_certificate(args.data_dir, args.name, args.role)
            await cr.record_client_certificate(args.data_dir, args.name, args.role, pair.cert_pem)
            paths = cr.write_client_certificate(args.out_dir, args.name, pair, ca_pem)
        except cr.CredentialError as exc:
            raise StartupError(str(exc)) from None
        print("\n".join(str(p) for p in paths))
        return
    if args.command == "backup":
        path = await backup_now(NodeOptions(data_dir=args.data_dir), args.output)
        print(f"snapshot written to {path}")
        print(
            "restoring it needs the cluster secret too: back up "
            f"{args.data_dir / 'pki' / 'cluster-secret'} apart from the snapshot"
        )
        return
    opts = NodeOptions(
        data_dir=args.data_dir,
        advertise_address=args.advertise_address,
        node_name=args.node_name,
        labels=args.labels,
        etcd_binary=getattr(args, "etcd_binary", None),
        etcd_member=getattr(args, "etcd_member", False),
        reexec_after_join=True,
        rootless=getattr(args, "rootless", None),
    )
    if args.command == "init":
        await run_init(args.config, opts, args.restore_from, args.cluster_secret_file)
    else:
        token = args.token
        if token is None:
            try:
                token = args.token_file.read_text().strip()
            except OSError as exc:
                raise StartupError(f"cannot read the join token file: {exc}") from None
        await run_join(args.leader, token, opts)


def _startup_errors(exc: BaseException) -> list[StartupError]:
    if isinstance(exc, StartupError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found = [e for sub in exc.exceptions for e in _startup_errors(sub)]
        return found
    return []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format, getattr(args, "log_file", None))
    # KAT_PROFILE=FILE: profile the event loop's thread with cProfile and write the stats
    # to FILE on exit (benchmarks/bench_scale.py --profile; pstats reads it).
    profile_to = os.environ.get("KAT_PROFILE")
    profiler = cProfile.Profile() if profile_to else None
    if profiler is not None:
        # SIGUSR1 starts the profile over (the benchmark sends it once its nodes are
        # connected, so that joining does not hide the phase it measures).
        def restart(_sig: int, _frame: object) -> None:
            nonlocal profiler
            assert profiler is not None
            profiler.disable()
            profiler = cProfile.Profile()
            profiler.enable()

        signal.signal(signal.SIGUSR1, restart)
    try:
        if profiler is not None:
            profiler.enable()
        asyncio.run(_run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    except BaseException as exc:  # noqa: BLE001 - unwrap TaskGroup groups into one clear line
        startup = _startup_errors(exc)
        if not startup:
            raise
        for err in startup:
            print(f"kat-agent: {err}", file=sys.stderr)
        return 1
    finally:
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)
    return 0


if __name__ == "__main__":
    sys.exit(main())
