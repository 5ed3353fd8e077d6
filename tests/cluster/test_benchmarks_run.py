"""The benchmarks that issue figures come from still run, at a size that takes seconds: a
change once left `bench_scale.py` failing at its first step, and nobody could reproduce a
figure until someone tried. Each runs as a user runs it (`python3 benchmarks/X.py`), on
the real parts (etcd, kat-agent, mTLS), and must end with its documented last line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None or shutil.which("kat-agent") is None,
    reason="needs etcd and kat-agent on PATH (scripts/setup.sh)",
)


def run(script: str, *args: str, timeout: float = 240) -> str:
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert lines, p.stderr[-3000:]
    return lines[-1]


def test_bench_scale_runs() -> None:
    last = run("bench_scale.py", "--nodes", "20", "--replicas", "10", "--sizes", "100")
    assert re.fullmatch(r"placements_per_second=\d+ leader_rss_mb=\d+", last), last


def test_bench_heartbeats_runs() -> None:
    out = run("bench_heartbeats.py", "--agents", "20", "--seconds", "3", "--warmup", "1")
    assert re.fullmatch(r"idle joined agent RSS: [\d.]+ MB.*", out), out


def test_bench_conn_memory_runs() -> None:
    last = run("bench_conn_memory.py", "--connections", "10")
    assert re.fullmatch(r"mtls_conn_kb=-?\d+ stream_kb=-?\d+ plaintext_conn_kb=-?\d+", last), last
