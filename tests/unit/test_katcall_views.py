"""The pure parts behind `katcall logs --previous`, `top` and `rollout history`: the node's
kept log of a restarted container (size cap, tail, since, timestamps, private file), the
cpu figure from two Podman samples, and the tables katcall prints."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from api.v1alpha1 import kat_pb2
from kat_agent.node import previous_logs
from kat_agent.node.podman.runtime import ContainerStats
from kat_agent.node.previous_logs import PreviousLogs
from kat_agent.node.stats import cpu_cores
from katcall import rollout_cmd, top_cmd


class Logged:
    """A runtime whose container printed `frames` (stream, data) with Podman's timestamps."""

    def __init__(self, frames: list[tuple[int, bytes]]) -> None:
        self.frames = frames

    async def log_frames(self, cid: str, **kw: object) -> AsyncIterator[tuple[int, bytes]]:
        assert kw.get("timestamps") is True
        for f in self.frames:
            yield f


def test_previous_log_keeps_streams_apart_and_honours_tail_since_timestamps(
    tmp_path: Path,
) -> None:
    store = PreviousLogs(tmp_path / "prev")
    assert store.read("i1") is None  # never restarted
    frames = [
        (1, b"2026-01-01T00:00:00.123456789Z first\n"),
        (2, b"2026-01-01T00:01:00Z oops\n"),
        (1, b"2026-01-01T00:02:00.5Z last\n"),
    ]
    asyncio.run(store.save(Logged(frames), "c1", "i1"))  # type: ignore[arg-type]
    mode = stat.S_IMODE(os.stat(store.path("i1")).st_mode)
    assert mode == 0o600
    assert store.read("i1") == [(1, b"first\n"), (2, b"oops\n"), (1, b"last\n")]
    assert store.read("i1", tail=1) == [(1, b"last\n")]
    assert store.read("i1", timestamps=True)[0] == frames[0]
    since = previous_logs._time_of(b"2026-01-01T00:00:30Z")
    assert store.read("i1", since=since) == [(2, b"oops\n"), (1, b"last\n")]
    store.drop("i1")
    store.drop("i1")  # gone already is fine
    assert store.read("i1") is None


def test_previous_log_keeps_only_the_newest_bytes(tmp_path: Path, monkeypatch: object) -> None:
    monkeypatch.setattr(previous_logs, "MAX_BYTES", 100)  # type: ignore[attr-defined]
    lines = [(1, f"2026-01-01T00:00:{i:02d}Z line {i}\n".encode()) for i in range(20)]
    store = PreviousLogs(tmp_path)
    asyncio.run(store.save(Logged(lines), "c", "i"))  # type: ignore[arg-type]
    kept = store.read("i") or []
    assert kept and kept[-1] == (1, b"line 19\n") and (1, b"line 0\n") not in kept
    assert store.path("i").stat().st_size <= 100


def test_cpu_from_two_samples() -> None:
    a = ContainerStats(cpu_nanos=1_000_000_000, system_nanos=10_000_000_000, memory_bytes=1,
                       memory_limit_bytes=0)  # fmt: skip
    b = ContainerStats(1_500_000_000, 11_000_000_000, 1, 0)
    assert cpu_cores(a, b) == 0.5
    assert cpu_cores(b, b) == 0.0  # no time passed: no figure, not a division by zero


def _workload(cpu_req: str, cpu_lim: str, mem_req: str, mem_lim: str) -> kat_pb2.Workload:
    w = kat_pb2.Workload()
    w.metadata.namespace, w.metadata.name = "default", "web"
    res = w.spec.container.resources
    res.requests.cpu, res.limits.cpu = cpu_req, cpu_lim
    res.requests.memory, res.limits.memory = mem_req, mem_lim
    return w


def test_top_rows_against_requests_and_limits() -> None:
    s = kat_pb2.InstanceStats(
        instance_id="web-1", namespace="default", workload="web", node="n1",
        cpu_cores=0.25, memory_bytes=16 << 20,
    )  # fmt: skip
    wls = {("default", "web"): _workload("100m", "500m", "32Mi", "")}
    headers, rows = top_cmd.instance_rows([s], wls, with_ns=False)
    assert headers[3:6] == ["CPU", "CPU/REQ", "CPU/LIM"]
    assert rows == [["web-1", "web", "n1", "250m", "250%", "50%", "16Mi", "50%", "-"]]
    node = kat_pb2.Node()
    node.metadata.name = "n1"
    node.status.allocatable.cpu_millis, node.status.allocatable.memory_bytes = 1000, 64 << 20
    _, nrows = top_cmd.node_rows([node], [s, s], wls)
    assert nrows == [["n1", "500m", "50%", "200m", "32Mi", "50%", "64Mi", "2"]]


def test_history_marks_the_current_revision_and_shows_the_cause() -> None:
    revs = []
    for n, image, cause in ((1, "a:1", "first"), (2, "a:2", "")):
        r = kat_pb2.WorkloadRevision(revision=n, created_by="admin", change_cause=cause)
        r.bundle.workload.spec.source.image = image
        r.created.FromSeconds(1_700_000_000)
        revs.append(r)
    headers, rows = rollout_cmd.history_rows(revs, current=2)
    assert headers == ["REVISION", "CREATED", "BY", "IMAGE", "CHANGE-CAUSE"]
    assert rows[0] == ["1", "2023-11-14T22:13:20Z", "admin", "a:1", "first"]
    assert rows[1][0] == "2 (current)" and rows[1][-1] == "-"
    assert rollout_cmd.target("workload/web", None) == "web"


def test_a_save_removes_the_logs_of_instances_gone_from_the_node(tmp_path: Path) -> None:
    live = {"kept": object()}
    store = PreviousLogs(tmp_path, live)
    for iid in ("kept", "gone"):
        store.path(iid).parent.mkdir(parents=True, exist_ok=True)
        store.path(iid).write_bytes(b"")
    asyncio.run(store.save(Logged([(1, b"2026-01-01T00:00:00Z x\n")]), "c", "new"))  # type: ignore[arg-type]
    assert sorted(p.stem for p in tmp_path.glob("*.log")) == ["kept", "new"]
