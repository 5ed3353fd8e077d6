"""Backups and `kat-agent init --restore-from` on a real one-node dev cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from internal.security import sealing
from tests.devcluster import DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")


def records(c: DevCluster) -> tuple[set[str], set[str], dict[str, str]]:
    tokens = json.loads(c.katcall("token", "list", "-o", "json", check=True).stdout)["items"]
    namespaces = json.loads(c.katcall("get", "namespaces", "-o", "json", check=True).stdout)
    nodes = json.loads(c.katcall("get", "nodes", "-o", "json", check=True).stdout)["items"]
    return (
        {t["id"] for t in tokens},
        {n["metadata"]["name"] for n in namespaces["items"]},
        {n["metadata"]["name"]: n["status"]["subnet"] for n in nodes},
    )


def test_snapshot_restored_into_a_fresh_data_dir_gives_back_the_records(tmp_path: Path) -> None:
    with DevCluster(1, tmp_path / "c") as c:
        for _ in range(3):
            c.katcall("token", "create", "-q", check=True)
        before = records(c)
        out = c.katcall("backup", check=True).stdout
        snapshot = Path(out.split()[1])
        assert snapshot.is_file() and snapshot.stat().st_mode & 0o777 == 0o600
        assert "BackupTaken" in c.katcall("get", "events", check=True).stdout

        c.kill("node1")
        fresh = tmp_path / "restored"
        restore = [
            "kat-agent",
            "init",
            "--restore-from",
            str(snapshot),
            "--data-dir",
            str(fresh),
            "--advertise-address",
            c.address("node1"),
        ]

        def refused(*extra: str) -> str:
            p = c.popen("node1", *restore, *extra, stderr=subprocess.PIPE, text=True)
            _, err = p.communicate(timeout=120)
            assert p.returncode != 0, err
            # nothing of a refused restore stays: the next attempt starts clean
            assert not (fresh / "etcd").exists() or not any((fresh / "etcd").iterdir())
            return err

        # the snapshot alone does not give the CA: its keys are sealed with the secret
        assert "needs --cluster-secret-file" in refused()
        wrong = tmp_path / "wrong-secret"
        sealing.write_secret(wrong, sealing.new_secret())
        assert "wrong secret" in refused("--cluster-secret-file", str(wrong))
        secret = Path(c.node("node1")["data_dir"], "pki", "cluster-secret")
        c.popen("node1", *restore, "--cluster-secret-file", str(secret))
        # the old admin config still works: the snapshot carries the cluster CA
        wait_until(
            lambda: c.katcall("get", "nodes").returncode == 0, timeout=60, what="restored API"
        )
        after = records(c)
        assert after[0] >= before[0]  # every token (init adds one more)
        assert after[1] == before[1]
        assert after[2] == before[2]
        wait_until(lambda: c.ready_nodes() == list(before[2]), timeout=30, what="node READY")


def test_restore_refuses_a_missing_snapshot(tmp_path: Path) -> None:
    sealing.write_secret(tmp_path / "secret", sealing.new_secret())
    p = subprocess.run(
        [
            "kat-agent",
            "init",
            "--restore-from",
            str(tmp_path / "nope.db"),
            "--data-dir",
            str(tmp_path / "d"),
            "--advertise-address",
            "127.0.0.1",
            "--cluster-secret-file",
            str(tmp_path / "secret"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and "not found" in p.stderr
