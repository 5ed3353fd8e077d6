"""Log lines: JSON with UTC millisecond timestamps and node/workload fields, repeated
warnings held back with a count, private size-rotated files, prints kept as JSON."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

from internal.observability import logs


def record(
    msg: str, *args: object, level: int = logging.WARNING, **extra: str
) -> logging.LogRecord:
    rec = logging.LogRecord("kat_agent.leader.agent_api", level, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_line_fields() -> None:
    logs.set_node("vm-2")
    try:
        rec = record(
            "instance %s started", "abc", level=logging.INFO, workload="web", instance="abc"
        )
        rec.created = 1_700_000_000.1234
        doc = json.loads(logs.JsonFormatter().format(rec))
    finally:
        logs.set_node("")
    assert doc == {
        "time": "2023-11-14T22:13:20.123Z",
        "level": "info",
        "component": "kat_agent.leader.agent_api",
        "msg": "instance abc started",
        "node": "vm-2",
        "workload": "web",
        "instance": "abc",
    }


def test_repeated_warnings_are_held_back_with_a_count() -> None:
    now = [0.0]
    f = logs.RepeatFilter(window=60, clock=lambda: now[0])
    passed = []
    for i in range(10):
        now[0] = i
        rec = record("refused join from %s: %s", f"10.0.0.{i}", "bad token")
        if f.filter(rec):
            passed.append(rec.getMessage())
    assert passed == ["refused join from 10.0.0.0: bad token"]
    assert f.filter(record("another warning"))  # a different message is not held back
    now[0] = 61
    rec = record("refused join from %s: %s", "10.0.0.9", "bad token")
    assert f.filter(rec)
    assert rec.getMessage().endswith("(and 9 more like it in the last 60s)")
    assert f.filter(record("info %s", "x", level=logging.INFO))
    assert f.filter(record("info %s", "x", level=logging.INFO))


def test_log_file_is_private_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    h = logs.PrivateRotatingFileHandler(path, maxBytes=300, backupCount=2)
    h.setFormatter(logs.JsonFormatter())
    try:
        for i in range(30):
            h.emit(record("line %d", i, level=logging.INFO))
    finally:
        h.close()
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["agent.log", "agent.log.1", "agent.log.2"]
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o600 and p.stat().st_size <= 400
        for line in p.read_text().splitlines():
            json.loads(line)


def test_prints_become_json_lines() -> None:
    out = io.StringIO()
    stream = logs.JsonLines(out, "stdout", "info")
    stream.write("KAT cluster initialised.\nJoin other")
    stream.write(" nodes with:\n\n")
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["msg"] for d in docs] == ["KAT cluster initialised.", "Join other nodes with:"]
    assert all(d["component"] == "stdout" and d["time"].endswith("Z") for d in docs)


def test_grpc_core_logging_is_silenced_for_json(monkeypatch: object) -> None:
    import os

    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)  # type: ignore[attr-defined]
    logs.quiet_grpc_core_logging(["kat-agent", "init", "--log-format", "text"])
    assert "GRPC_VERBOSITY" not in os.environ
    logs.quiet_grpc_core_logging(["kat-agent", "init", "--log-format=json"])
    assert os.environ["GRPC_VERBOSITY"] == "NONE"


def test_child_output_through_a_pipe_is_rotated_by_size(tmp_path: Path) -> None:
    """etcd's and Podman's output: a pipe copied into a 0600 file rotated by size."""
    from internal.observability import rotation

    path = tmp_path / "etcd.log"
    target = rotation.RotatingFile(path, max_bytes=1000, keep=2)
    fd = rotation.pipe_into(target)
    with os.fdopen(fd, "wb", buffering=0) as w:
        for i in range(100):
            w.write(f"line {i:03d} of the child\n".encode())

    def current() -> bytes:
        # The copy thread may rotate the file away between any two looks at it.
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""

    wait = time.monotonic() + 10
    while b"line 099" not in current():
        assert time.monotonic() < wait, "the copy thread did not reach the end"
        time.sleep(0.01)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["etcd.log", "etcd.log.1", "etcd.log.2"]  # older ones dropped
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600 and p.stat().st_size <= 1000
    # removed behind our back: the next write makes it again
    path.unlink()
    target.write(b"again\n")
    assert path.read_bytes() == b"again\n"
