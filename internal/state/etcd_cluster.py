"""The maintenance and membership calls of `EtcdClient` (status, health, members,
snapshots): a mixin over its endpoint pool, kept apart from the key-value, lease and
watch calls."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyetcd import etcdrpc

from internal.state.etcd_endpoints import Endpoints
from internal.state.etcd_values import EtcdError, EtcdStatus, Member
from internal.state.etcd_wire import member_value


class ClusterCalls:
    _pool: Endpoints
    timeout: float

    # ------------------------------------------------------------ cluster

    async def status(self) -> EtcdStatus:
        """Status of the member behind the current endpoint (works without quorum)."""
        req = etcdrpc.StatusRequest()
        resp = await self._pool.run(
            "status", lambda s: s.Status(req, self.timeout), kind="maintenance"
        )
        return EtcdStatus(
            endpoint=self._pool.current,
            member_id=int(resp.header.member_id),
            leader_id=int(resp.leader),
            version=str(resp.version),
            db_size=int(resp.dbSize),
            raft_index=int(resp.raftIndex),
            raft_term=int(resp.raftTerm),
            revision=int(resp.header.revision),
        )

    async def healthy(self) -> bool:
        """Whether a linearizable read succeeds (a member is up and has quorum)."""
        req = etcdrpc.RangeRequest(key=b"health")
        try:
            await self._pool.run("health check", lambda s: s.Range(req, self.timeout))
        except EtcdError:
            return False
        return True

    async def member_list(self) -> list[Member]:
        req = etcdrpc.MemberListRequest()
        resp = await self._pool.run(
            "member list", lambda s: s.MemberList(req, self.timeout), kind="cluster"
        )
        return [member_value(m) for m in resp.members]

    async def move_leader(self, member_id: int) -> None:
        """Hand raft leadership to `member_id`; only the current raft leader (the member
        behind the current endpoint) accepts it. Returns once the transfer is done."""
        req = etcdrpc.MoveLeaderRequest(targetID=member_id)
        await self._pool.run(
            f"move leader {member_id:x}",
            lambda s: s.MoveLeader(req, self.timeout),
            kind="maintenance",
            retry=False,
        )

    async def member_add(self, peer_urls: Sequence[str]) -> tuple[Member, list[Member]]:
        """Add a member; returns it and the whole new member list (what the new
        member needs for --initial-cluster)."""
        req = etcdrpc.MemberAddRequest(peerURLs=list(peer_urls))
        resp = await self._pool.run(
            "member add", lambda s: s.MemberAdd(req, self.timeout), kind="cluster", retry=False
        )
        return member_value(resp.member), [member_value(m) for m in resp.members]

    async def member_remove(self, member_id: int) -> None:
        req = etcdrpc.MemberRemoveRequest(ID=member_id)
        await self._pool.run(
            f"member remove {member_id:x}",
            lambda s: s.MemberRemove(req, self.timeout),
            kind="cluster",
            retry=False,
        )

    async def snapshot(self, path: Path, *, max_seconds: float = 300.0) -> int:
        """Stream a snapshot of the current member's database to `path`
        (written to a temp file, mode 0600, then renamed). Returns its size."""
        path = Path(path)

        def save(stub: Any) -> int:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            size = 0
            try:
                with os.fdopen(fd, "wb") as f:
                    for chunk in stub.Snapshot(etcdrpc.SnapshotRequest(), max_seconds):
                        f.write(chunk.blob)
                        size += len(chunk.blob)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return size

        return await self._pool.run(
            f"snapshot to {path}", save, kind="maintenance", retry=False, deadline=max_seconds
        )
