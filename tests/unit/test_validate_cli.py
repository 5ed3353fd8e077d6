# ruff: noqa: E501 - expected messages read best on one line
"""`katcall validate -f PATH`, run as a real subprocess and in-process."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from kat_docs import NAMESPACE, WORKLOAD, dump, edit
from tar_builders import GiB, gz, gzip_stream, header_block, member, tar_bytes, targz

from internal.manifests.bundle import pack_dir
from katcall import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def katcall(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "katcall.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("path", "summary"),
    [
        ("web", "valid: Workload default/web (SERVICE, 3 replicas) + VirtualLoadBalancer"),
        (
            "cron-job",
            'valid: Workload default/ticker (JOB) + JobDefinition (schedule "*/5 * * * *")',
        ),
        ("daemon", "valid: Workload default/node-logger (DAEMON_SERVICE)"),
        (
            "git-build",
            "valid: Workload default/hello-build (SERVICE, 2 replicas) + BuildDefinition",
        ),
        (
            "cluster.kat",
            "valid: ClusterConfiguration home-lab (clusterCIDR 10.100.0.0/16, node subnets /23, serviceCIDR 10.200.0.0/16)",
        ),
        ("web/workload.kat", "valid: Workload default/web (SERVICE, 3 replicas)"),
        ("web/VirtualLoadBalancer.kat", "valid: VirtualLoadBalancer default/web"),
    ],
)
def test_examples_validate(path: str, summary: str) -> None:
    result = katcall("validate", "-f", f"examples/{path}")
    assert (result.returncode, result.stdout, result.stderr) == (0, summary + "\n", "")


def test_console_script_if_installed() -> None:
    exe = shutil.which("katcall")
    if exe is None:
        pytest.skip("katcall console script not installed (pip install -e .)")
    result = subprocess.run(
        [exe, "validate", "-f", str(EXAMPLES / "web")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid: Workload default/web")


def test_tar_gz_bundle(tmp_path: Path) -> None:
    archive = tmp_path / "web.tar.gz"
    archive.write_bytes(pack_dir(EXAMPLES / "web"))
    result = katcall("validate", "-f", str(archive))
    assert result.returncode == 0
    assert (
        result.stdout == "valid: Workload default/web (SERVICE, 3 replicas) + VirtualLoadBalancer\n"
    )


def test_invalid_bundle_lists_every_problem(tmp_path: Path) -> None:
    (tmp_path / "workload.kat").write_bytes(
        dump(
            edit(
                WORKLOAD, {"spec.container.imagee": "x", "spec.replicas": -1, "spec.type": "SERVCE"}
            )
        )
    )
    (tmp_path / "README.md").write_text("not part of the bundle")
    result = katcall("validate", "-f", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        'workload.kat: spec.type: invalid value "SERVCE": must be one of SERVICE, JOB, DAEMON_SERVICE',
        "workload.kat: spec.container.imagee: unknown field",
        "workload.kat: spec.replicas: must be >= 0, got -1",
    ]


def test_invalid_single_file_names_the_path(tmp_path: Path) -> None:
    f = tmp_path / "ns.kat"
    f.write_bytes(dump(edit(NAMESPACE, {"metadata.name": "Team A"})))
    result = katcall("validate", "-f", str(f))
    assert result.returncode == 1
    assert result.stderr.startswith(f'{f}: metadata.name: "Team A" is not a valid name')
    assert "Traceback" not in result.stderr


def test_missing_path_is_one_clear_line() -> None:
    result = katcall("validate", "-f", "/nonexistent/bundle")
    assert result.returncode == 1
    assert result.stderr == "katcall: /nonexistent/bundle: No such file or directory\n"


def test_usage_errors() -> None:
    result = katcall("validate")
    assert result.returncode == 2
    assert "-f/--filename" in result.stderr
    assert katcall().returncode == 2


HOSTILE = {
    "symlink": (
        targz(member("workload.kat", kind=tarfile.SYMTYPE, linkname="/etc/shadow")),
        'bundle refused: symlink "workload.kat" not allowed',
    ),
    "hardlink": (
        targz(member("workload.kat", kind=tarfile.LNKTYPE, linkname="/etc/shadow")),
        'bundle refused: hard link "workload.kat" not allowed',
    ),
    "dotdot": (
        targz(member("../../etc/cron.d/x", b"* * * * * root sh")),
        'bundle refused: "../../etc/cron.d/x" escapes the bundle',
    ),
    "absolute": (
        targz(member("/etc/cron.d/x", b"x")),
        'bundle refused: "/etc/cron.d/x" is an absolute path',
    ),
    "device": (
        targz(member("workload.kat", kind=tarfile.CHRTYPE)),
        'bundle refused: character device "workload.kat" not allowed',
    ),
    "fifo": (
        targz(member("workload.kat", kind=tarfile.FIFOTYPE)),
        'bundle refused: fifo "workload.kat" not allowed',
    ),
    "unknown": (targz(member("payload.sh", b"x")), 'bundle refused: unknown file "payload.sh"'),
    "corrupt": (b"\x1f\x8b\x08\x00" + b"\x00garbage" * 40, "bundle refused: corrupt gzip data"),
    "bomb": (gzip_stream(b"", GiB), "bundle refused: uncompressed size exceeds 4 MiB"),
    "huge-file": (
        gzip_stream(header_block("workload.kat", GiB), GiB),
        'bundle refused: "workload.kat" is larger than 1 MiB',
    ),
    "many-entries": (
        gzip_stream(b"", 0, header_block("./", 0, tarfile.DIRTYPE), 100_000),
        "bundle refused: more than 16 entries",
    ),
    "plain-tar": (tar_bytes([member("workload.kat", b"x")]), "bundle refused: not gzip-compressed"),
    "trailing": (
        gz(tar_bytes([member("workload.kat", b"x")])) + b"MZ",
        "bundle refused: unexpected data after the end of the gzip stream",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bundles_are_refused_quickly(tmp_path: Path, name: str) -> None:
    data, reason = HOSTILE[name]
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(data)
    # CPU time of the katcall process, not wall time: bounded work, whatever the machine's load.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = katcall("validate", "-f", str(archive))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(reason), result.stderr
    assert elapsed < 1.5, f"{elapsed:.2f} s of CPU"


def test_directory_with_unknown_kat_file(tmp_path: Path) -> None:
    (tmp_path / "workload.kat").write_bytes(dump(WORKLOAD))
    (tmp_path / "Virtualloadbalancer.kat").write_bytes(b"x")
    result = katcall("validate", "-f", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith('bundle refused: unknown bundle file "Virtualloadbalancer.kat"')


# ------------------------------------------------------------------ in-process (fast) variants


def test_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "-f", str(EXAMPLES / "daemon")]) == 0
    assert capsys.readouterr().out == "valid: Workload default/node-logger (DAEMON_SERVICE)\n"
    ns = tmp_path / "team.kat"
    ns.write_bytes(dump(NAMESPACE))
    assert cli.main(["validate", "-f", str(ns)]) == 0
    assert capsys.readouterr().out == "valid: Namespace team-a\n"
    archive = tmp_path / "ns.tgz"
    archive.write_bytes(targz(member("namespace.kat", dump(NAMESPACE))))
    assert cli.main(["validate", "--filename", str(archive)]) == 0
    assert capsys.readouterr().out == "valid: Namespace team-a\n"


def test_oversized_archive_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + os.urandom(2 << 20))
    assert cli.main(["validate", "-f", str(archive)]) == 1
    assert capsys.readouterr().err == "bundle refused: compressed size exceeds 1 MiB\n"
