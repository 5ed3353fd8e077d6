"""Scheduled etcd snapshots on the leader, kept newest-first in backupPath."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from api.v1alpha1 import kat_pb2
from internal.core.events import new_event
from internal.observability import metrics
from internal.state.store import Store
from kat_agent.leader.context import LeaderContext

log = logging.getLogger(__name__)

_NAME = re.compile(r"^kat-snapshot-\d{8}T\d{6}\d{6}Z\.db$")
DEFAULT_RETENTION = 5


def snapshot_name(now: datetime) -> str:
    return f"kat-snapshot-{now:%Y%m%dT%H%M%S%f}Z.db"


def to_prune(names: list[str], keep: int) -> list[str]:
    """The snapshot files beyond the newest `keep` (names sort by time)."""
    ours = sorted(n for n in names if _NAME.match(n))
    return ours[: max(0, len(ours) - keep)]


def newest_snapshot_time(directory: Path) -> float | None:
    """The modification time of the newest snapshot in directory, if any."""
    try:
        ours = sorted(n for n in os.listdir(directory) if _NAME.match(n))
        return (directory / ours[-1]).stat().st_mtime if ours else None
    except OSError:
        return None


def prune(directory: Path, keep: int) -> None:
    for name in to_prune([p.name for p in directory.iterdir()], keep):
        (directory / name).unlink(missing_ok=True)


async def take_backup(
    store: Store, spec: kat_pb2.ClusterConfigurationSpec
) -> kat_pb2.BackupResponse:
    """Write a snapshot now, prune old ones and record an event."""
    now = datetime.now(UTC)
    directory = Path(spec.backup_path)
    path = directory / snapshot_name(now)
    size = await store.etcd.snapshot(path)
    metrics.backup_taken(now.timestamp())
    keep = spec.backup_retention or DEFAULT_RETENTION
    await asyncio.to_thread(prune, directory, keep)
    await store.record_event(
        new_event(
            "BackupTaken", f"etcd snapshot {path} ({size} bytes)", kind="Cluster", name="backup"
        )
    )
    log.info("backup written to %s (%d bytes)", path, size)
    resp = kat_pb2.BackupResponse(path=str(path), size_bytes=size)
    resp.taken_at.FromDatetime(now)
    return resp


async def run_backups(lc: LeaderContext) -> None:
    """Reconcile loop: a snapshot every backupIntervalMinutes while leading."""
    interval = lc.spec.backup_interval_minutes * 60
    # A leader after a failover: the age of the newest snapshot here, whoever took it.
    newest = await asyncio.to_thread(newest_snapshot_time, Path(lc.spec.backup_path))
    if newest is not None:
        metrics.backup_taken(newest)
    while True:
        await asyncio.sleep(interval)
        try:
            await take_backup(lc.store, lc.spec)
        except Exception as exc:  # noqa: BLE001 - a failed backup must not stop leading
            log.error("scheduled backup failed: %s", exc)
            await lc.store.record_event(
                new_event("BackupFailed", str(exc), kind="Cluster", name="backup", warning=True)
            )
