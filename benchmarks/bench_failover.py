"""Seconds from losing the leader to the first API call a new leader serves, on a real
3-member dev cluster (scripts/dev-cluster), median of several runs, for a crash and for a
clean stop.

    python3 benchmarks/bench_failover.py [--runs 5] [--modes crash,stop]

- crash: SIGKILL the leader's agent and its etcd (`dev-cluster kill`): the new leader
  can only take over once the election lease expires (target: lease TTL + 2 s);
- stop: SIGTERM the leader's agent (what systemd does on `systemctl stop`): it revokes its
  lease on the way out, so another member takes over at once (target: under 2 s).

The clock starts when the signal is about to be sent (for a crash: when `dev-cluster kill`
is started, whose own start-up is counted; each run prints by when the signal had been
sent, and the summary also gives the median counted from then); it stops when a ListNodes
call (mTLS, the admin config's credentials, sent to every other member every 50 ms in this
process, so no CLI start-up time is counted) is answered. Between runs the node is started
again and the bench waits until all three nodes are READY. The last line is
`failover_crash_median_s=X failover_stop_median_s=Y ttl_s=T`.

Each run also prints where the time went, read from the members' logs (seconds after the
signal): whether the killed node's etcd was the raft leader, when the survivors' etcd
elected a new raft leader, when a follower saw the leader key go, when a member won the
election and when it had loaded the nodes (it serves from then on). The crash summary is
split by "the killed node was the raft leader or not": etcd renews every lease to its full
TTL (plus an election timeout) when a new raft leader takes over, so in that case the
dead leader's key outlives its lease (etcd-io/etcd#9395).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.v1alpha1 import kat_pb2, kat_pb2_grpc  # noqa: E402
from internal.security import clientconfig, rpc  # noqa: E402
from kat_agent.member import leader_ttl  # noqa: E402
from tests.devcluster import DevCluster, wait_until  # noqa: E402

NODE_LOSS_TIMEOUT = 5  # scripts/dev-cluster's default nodeLossTimeoutSeconds


async def first_answer(katconfig: Path, endpoints: list[str], limit: float = 60) -> str:
    """Poll ListNodes on `endpoints` until one answers; returns that endpoint."""
    ctx = clientconfig.load(katconfig).context()
    creds = rpc.client_credentials(ctx.ca, ctx.cert, ctx.key)
    channels = [grpc.aio.secure_channel(e, creds, rpc.api_channel_options()) for e in endpoints]
    try:
        stubs = [kat_pb2_grpc.ClusterAPIStub(ch) for ch in channels]
        deadline = time.monotonic() + limit

        async def ask(i: int) -> str | None:
            try:
                await stubs[i].ListNodes(kat_pb2.ListRequest(), timeout=1)
                return endpoints[i]
            except grpc.aio.AioRpcError:
                return None

        while time.monotonic() < deadline:
            for got in await asyncio.gather(*(ask(i) for i in range(len(stubs)))):
                if got is not None:
                    return got
            await asyncio.sleep(0.05)
        raise SystemExit(f"no API answer within {limit} s")
    finally:
        for ch in channels:
            await ch.close()


def _stamp(line: str) -> float | None:
    """Unix time of an agent log line ("2026-...Z LEVEL ...") or an etcd JSON line."""
    if line.startswith("{"):
        try:
            ts = json.loads(line).get("ts", "")
        except ValueError:
            return None
    else:
        ts = line.split(" ", 1)[0]
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _first_after(paths: list[Path], t0: float, pattern: str) -> float | None:
    """Seconds after t0 of the first line (of any of the files) at or after t0 matching."""
    rx = re.compile(pattern)
    found = [
        t - t0
        for p in paths
        for ln in _lines(p)
        if rx.search(ln) and (t := _stamp(ln)) is not None and t >= t0
    ]
    return min(found) if found else None


_RAFT = re.compile(r"raft\.node: (\w+) (elected|lost) leader (\w+)")


def was_raft_leader(etcd_log: Path, t0: float) -> bool | None:
    """Whether this member was etcd's raft leader at t0, from its own log."""
    state = None
    for ln in _lines(etcd_log):
        m = _RAFT.search(ln)
        t = _stamp(ln) if m else None
        if m is None or t is None or t > t0:
            continue
        state = m.group(2) == "elected" and m.group(1) == m.group(3)
    return state


def timeline(c: DevCluster, killed: dict, t0: float) -> dict[str, float | bool | None]:
    """Where the time of one failover went, from the members' logs (seconds after t0)."""
    others = [n for n in c.state()["nodes"] if n["key"] != killed["key"] and n["etcd_member"]]
    agents = [Path(n["log"]) for n in others]
    etcds = [Path(n["data_dir"]) / "etcd" / "etcd.log" for n in others]
    return {
        "raft_leader": was_raft_leader(Path(killed["data_dir"]) / "etcd" / "etcd.log", t0),
        "raft": _first_after(etcds, t0, r"raft\.node: \w+ elected leader"),
        "gone": _first_after(agents, t0, r"election: the leader key of .* is gone"),
        "won": _first_after(agents, t0, r"election: \S+ is the leader"),
        "loaded": _first_after(agents, t0, r"kat_agent\.member: \S+ is the leader"),
    }


def _fmt(v: float | bool | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def one_run(c: DevCluster, mode: str) -> tuple[str, float, dict[str, float | bool | None]]:
    nodes = c.nodes_json()
    leader = next(n for n in nodes if n["status"].get("leader"))["metadata"]["name"]
    info = c.node(leader)
    port = c.state().get("api_port", 9115)
    others = [f"{c.address(n['metadata']['name'])}:{port}" for n in nodes]
    others = [e for e in others if not e.startswith(f"{info['address']}:")]
    assert c.katconfig is not None
    wall0 = time.time()
    t0 = time.monotonic()
    if mode == "crash":
        c.kill(info["key"])  # a dev-cluster process: its start-up is counted too
    else:
        os.kill(info["pid"], signal.SIGTERM)
    signalled = time.monotonic() - t0
    asyncio.run(first_answer(c.katconfig, others))
    took = time.monotonic() - t0
    steps = timeline(c, info, wall0)
    steps["signalled"] = signalled
    if mode == "stop":  # let it finish its shutdown before it is started again
        wait_until(lambda: not _alive(info["pid"]), timeout=60, what="agent exit")
    c.start(info["key"])
    wait_until(lambda: len(c.ready_nodes()) == 3, timeout=120, what="all READY")
    return leader, took, steps


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by dev-cluster) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--modes", default="crash,stop")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    ttl = leader_ttl(kat_pb2.ClusterConfigurationSpec(node_loss_timeout_seconds=NODE_LOSS_TIMEOUT))
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kat-failover-") as tmp:
        with DevCluster(3, Path(tmp) / "c", etcd_members=3) as c:
            c.katcall("get", "nodes", check=True)  # learn every endpoint
            for mode in modes:
                times = []
                after_signal = []
                by_raft: dict[str, list[float]] = {"yes": [], "no": [], "unknown": []}
                for run in range(a.runs):
                    leader, took, st = one_run(c, mode)
                    times.append(took)
                    after_signal.append(took - float(st["signalled"] or 0))
                    raft = {True: "yes", False: "no", None: "unknown"}[st["raft_leader"]]  # type: ignore[index]
                    by_raft[raft].append(took)
                    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                    print(
                        f"{mode} run {run + 1}: leader {leader}, a new leader served after "
                        f"{took:.2f} s (load average {load}); signal sent by "
                        f"+{_fmt(st['signalled'])}; killed node was raft leader: "
                        f"{raft}; new raft leader +{_fmt(st['raft'])}, key gone seen "
                        f"+{_fmt(st['gone'])}, election won +{_fmt(st['won'])}, nodes loaded "
                        f"+{_fmt(st['loaded'])}",
                        flush=True,
                    )
                medians[mode] = statistics.median(times)
                split = ", ".join(
                    f"raft leader {k}: {len(v)} runs, median {statistics.median(v):.2f} s"
                    for k, v in by_raft.items()
                    if v
                )
                print(
                    f"{mode}: {a.runs} runs, median {medians[mode]:.2f} s, "
                    f"min {min(times):.2f} s, max {max(times):.2f} s (lease TTL {ttl} s); "
                    f"{split}; median counted from when the signal had been sent "
                    f"{statistics.median(after_signal):.2f} s",
                    flush=True,
                )
    print(" ".join(f"failover_{m}_median_s={v:.2f}" for m, v in medians.items()) + f" ttl_s={ttl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
