"""`katcall logs` and `katcall exec`, through the leader to the instance's node.

logs: container stdout goes to stdout and stderr to stderr; without --instance every
line carries an `[instance]` prefix. exec: `-i` passes stdin, `-t` gives the command a
real terminal (raw mode here, the window size sent at the start and on every resize).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from typing import BinaryIO

import grpc

from api.v1alpha1 import kat_pb2
from katcall import session
from katcall.session import connect
from katcall.token_cmd import parse_duration


def _rpc_error(err: grpc.RpcError) -> int:
    print(f"error: {err.details() or err.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
    return 1


class LineSplitter:
    """Prefixes each complete line with `[instance] `, per (instance, stream)."""

    def __init__(self) -> None:
        self.partial: dict[tuple[str, bool], bytes] = {}

    def feed(self, instance: str, err: bool, data: bytes) -> bytes:
        *lines, self.partial[(instance, err)] = (
            self.partial.get((instance, err), b"") + data
        ).split(b"\n")
        return b"".join(f"[{instance}] ".encode() + line + b"\n" for line in lines)

    def rest(self) -> Iterator[tuple[bool, bytes]]:
        for (instance, err), data in self.partial.items():
            if data:
                yield err, f"[{instance}] ".encode() + data + b"\n"


def cmd_logs(args: argparse.Namespace) -> int:
    if args.all_instances and args.instance:
        print("error: give --instance or --all-instances, not both", file=sys.stderr)
        return 2
    req = kat_pb2.LogsRequest(
        namespace=args.namespace or "default",
        workload=args.workload,
        instance_id=args.instance or "",
        follow=args.follow,
        tail=args.tail,
        since_seconds=args.since or 0,
        timestamps=args.timestamps,
        previous=args.previous,
    )
    outs: dict[bool, BinaryIO] = {False: sys.stdout.buffer, True: sys.stderr.buffer}
    prefix = LineSplitter()
    with connect(args) as client:
        stream = client.logs(req)
        try:
            for chunk in stream:
                out = outs[chunk.stderr]
                if args.instance:
                    out.write(chunk.data)
                else:
                    out.write(prefix.feed(chunk.instance_id, chunk.stderr, chunk.data))
                out.flush()
        except grpc.RpcError as err:
            return _rpc_error(err)
        finally:
            stream.cancel()
            for err, rest in prefix.rest():
                outs[err].write(rest)
            for out in outs.values():
                out.flush()
    return 0


# ------------------------------------------------------------------ exec


def _read_stdin(into: queue.Queue[kat_pb2.ExecRequest | None]) -> None:
    fd = sys.stdin.fileno()
    while True:
        try:
            data = os.read(fd, 64 * 1024)
        except OSError:
            data = b""
        if not data:
            into.put(None)
            return
        into.put(kat_pb2.ExecRequest(stdin=data))


def _requests(
    first: kat_pb2.ExecRequest, more: queue.Queue[kat_pb2.ExecRequest | None] | None
) -> Iterator[kat_pb2.ExecRequest]:
    yield first
    if more is None:
        return
    while (msg := more.get()) is not None:
        yield msg


def _size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 0, 0
    return size.lines, size.columns


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if "--" in command:  # options after the workload name: `exec web -it -- sh`
        cut = command.index("--")
        late = argparse.ArgumentParser(prog="katcall exec", add_help=False)
        _exec_options(late, suppress=True)
        session.add_global_options_to(late)
        late.parse_args(command[:cut], namespace=args)
        command = command[cut + 1 :]
    if not command:
        print("error: give the command after --, e.g. katcall exec web -- ls /", file=sys.stderr)
        return 2
    tty_wanted = args.tty
    if tty_wanted and not sys.stdin.isatty():
        print("error: -t needs a terminal on stdin (drop -t when piping)", file=sys.stderr)
        return 2
    fd = sys.stdin.fileno()
    rows, cols = _size(fd) if tty_wanted else (0, 0)
    first = kat_pb2.ExecRequest(
        namespace=args.namespace or "default",
        workload=args.workload,
        instance_id=args.instance or "",
        command=command,
        tty=tty_wanted,
        rows=rows,
        cols=cols,
    )
    more: queue.Queue[kat_pb2.ExecRequest | None] | None = None
    if args.stdin or tty_wanted:
        more = queue.Queue(64)
        if args.stdin:
            threading.Thread(target=_read_stdin, args=(more,), daemon=True).start()
    code = 0
    raw = _raw_terminal(fd) if tty_wanted else contextlib.nullcontext()
    with connect(args) as client, raw:
        if tty_wanted and more is not None:
            sink = more

            def on_resize(_sig: int, _frame: object) -> None:
                r, c = _size(fd)
                with contextlib.suppress(queue.Full):
                    sink.put_nowait(kat_pb2.ExecRequest(rows=r, cols=c))

            signal.signal(signal.SIGWINCH, on_resize)
        responses = client.exec(_requests(first, more))
        try:
            for resp in responses:
                if resp.stdout:
                    sys.stdout.buffer.write(resp.stdout)
                    sys.stdout.buffer.flush()
                if resp.stderr:
                    sys.stderr.buffer.write(resp.stderr)
                    sys.stderr.buffer.flush()
                if resp.exited:
                    code = resp.exit_code
        except grpc.RpcError as err:
            return _rpc_error(err)
        finally:
            responses.cancel()
            if more is not None:
                with contextlib.suppress(queue.Full):
                    more.put_nowait(None)  # let the request iterator end
    return code


def _exec_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p.add_argument(
        "--instance", default=default(None), help="the instance (default: the first RUNNING one)"
    )
    p.add_argument(
        "-i", "--stdin", action="store_true", default=default(False), help="pass stdin to it"
    )
    p.add_argument(
        "-t", "--tty", action="store_true", default=default(False), help="give it a terminal"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lg = sub.add_parser(
        "logs",
        help="print the logs of a workload's instances",
        description="Print a workload's logs: container stdout on stdout, stderr on stderr. "
        "Without --instance, all instances, each line prefixed with [instance]. --previous "
        "shows the container an instance had before its last restart: its node keeps that "
        "container's output (the newest 1 MiB) when it replaces it.",
    )
    lg.add_argument("workload")
    lg.add_argument("--instance", help="one instance (default: all instances of the workload)")
    lg.add_argument(
        "--all-instances",
        action="store_true",
        help="every instance, each line prefixed with [instance] (the default without --instance)",
    )
    lg.add_argument(
        "-p",
        "--previous",
        action="store_true",
        help="the container before the instance's last restart (kept by its node)",
    )
    lg.add_argument("-f", "--follow", action="store_true", help="keep streaming new output")
    lg.add_argument("--tail", type=int, default=0, help="only the last N lines (default: all)")
    lg.add_argument(
        "--since", type=parse_duration, metavar="DURATION", help="only newer lines, e.g. 10m, 1h"
    )
    lg.add_argument(
        "--timestamps", action="store_true", help="prefix each line with its RFC 3339 time"
    )
    lg.set_defaults(func=cmd_logs)

    ex = sub.add_parser(
        "exec",
        help="run a command in a running instance",
        description="Run a command in an instance: katcall exec web [-i] [-t] -- COMMAND...",
    )
    ex.add_argument("workload")
    _exec_options(ex, suppress=False)
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    ex.set_defaults(func=cmd_exec)
