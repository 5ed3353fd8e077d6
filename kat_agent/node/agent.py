"""The agent role, on every node: heartbeats to the leader, following it when
leadership moves, and carrying on when it is unreachable (detached operation)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.host.datadir import DataDir, NodeIdentity
from internal.security import rpc
from internal.security.certfiles import KeyPairFile
from internal.version import VERSION

log = logging.getLogger(__name__)

# Kept back from the machine's capacity for the system and KAT itself.
RESERVED_CPU_MILLIS = 100
REMOVED_AFTER_SECONDS = 10.0
RESERVED_MEMORY_BYTES = 256 * 1024 * 1024


def machine_resources() -> tuple[kat_pb2.NodeResources, kat_pb2.NodeResources]:
    cpu = (os.cpu_count() or 1) * 1000
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
                break
    capacity = kat_pb2.NodeResources(cpu_millis=cpu, memory_bytes=mem)
    allocatable = kat_pb2.NodeResources(
        cpu_millis=max(0, cpu - RESERVED_CPU_MILLIS),
        memory_bytes=max(0, mem - RESERVED_MEMORY_BYTES),
    )
    return capacity, allocatable


class LeaderLink:
    """An mTLS channel to whichever API endpoint currently leads, made with the node's
    certificate as it is on disk now (a renewed one from the next channel on)."""

    def __init__(self, endpoints: list[str], ca: bytes, pair: KeyPairFile) -> None:
        self.endpoints = list(endpoints)
        self._ca, self._pair = ca, pair
        self._version = pair.version
        self._creds = rpc.client_credentials(ca, *pair.current())
        self._index = 0
        self._channel: grpc.aio.Channel | None = None
        self._target = ""
        # Set when the channel was closed for a renewed certificate: the streams it ends
        # are reopened at once, on the same endpoint, and that is no failure.
        self.renewed = False

    def refresh_credentials(self) -> None:
        """Take the certificate on disk if it changed: the old channel is closed (after a
        short grace for calls in flight), so that every stream is reopened, by its own
        loop, on a new channel with the new certificate."""
        self._pair.refresh()
        if self._pair.version != self._version:
            self._version = self._pair.version
            self._creds = rpc.client_credentials(self._ca, self._pair.cert, self._pair.key)
            old, self._channel, self._target = self._channel, None, ""
            self.renewed = True
            if old is not None:
                asyncio.get_running_loop().create_task(old.close(grace=5))

    def _open(self, target: str) -> grpc.aio.Channel:
        if self._channel is None or target != self._target:
            if self._channel is not None:
                asyncio.get_running_loop().create_task(self._channel.close())
            self._channel = grpc.aio.secure_channel(
                target, self._creds, options=rpc.api_channel_options()
            )
            self._target = target
        return self._channel

    def stub(self) -> kat_pb2_grpc.AgentAPIStub:
        return kat_pb2_grpc.AgentAPIStub(
            self._open(self.endpoints[self._index % len(self.endpoints)])
        )

    def failed(self, leader: str | None) -> None:
        """Move to the leader a non-leader named, or to the next endpoint."""
        if leader:
            if leader not in self.endpoints:
                self.endpoints.append(leader)
            self._index = self.endpoints.index(leader)
        else:
            self._index += 1

    def update_endpoints(self, endpoints: list[str]) -> None:
        current = self._target
        merged = list(dict.fromkeys([*endpoints, *self.endpoints]))
        self.endpoints = merged
        if current in merged:
            self._index = merged.index(current)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class Agent:
    def __init__(
        self,
        datadir: DataDir,
        identity: NodeIdentity,
        tick_seconds: int,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.datadir = datadir
        self.identity = identity
        self.tick = tick_seconds
        self.labels = dict(labels or {})
        self.node_pair = KeyPairFile(datadir.node_cert, datadir.node_key)
        self.link = LeaderLink(identity.api_endpoints, datadir.ca_cert.read_bytes(), self.node_pair)
        self.capacity, self.allocatable = machine_resources()
        self.connected = asyncio.Event()
        # One "session" per successful (re)connection of the heartbeat path; its event is
        # set when that path breaks. The assignments stream lives exactly as long as one
        # session, so it follows every reconnect and every move to another leader.
        self.session = 0
        self.session_over = asyncio.Event()
        self._stream: grpc.aio.StreamStreamCall | None = None
        # The node runtime reports its instances here and asks for an early
        # beat when one changes, so the leader hears of it without waiting a tick.
        self.instances: Callable[[], list[kat_pb2.Instance]] = list
        # The overlay's state and key (kat_agent/node/network), when the node has one.
        self.overlay: Callable[[], kat_pb2.OverlayStatus | None] = lambda: None
        # The ingress proxy's state, on a node that runs it.
        self.ingress: Callable[[], kat_pb2.IngressStatus | None] = lambda: None
        self.wireguard_public_key = ""
        self._wake = asyncio.Event()
        self.leader_node = ""  # the leader's node name, as its last answer said
        # Called when the link to the leader comes up or goes down (detached operation).
        self.on_link_change: Callable[[], None] = lambda: None
        # Called once the leader has refused this node's certificate as revoked (the
        # node was removed) on every beat for REMOVED_AFTER_SECONDS.
        self.on_removed: Callable[[], None] = lambda: None
        self._revoked_since: float | None = None
        self.removed = False

    def beat_now(self) -> None:
        self._wake.set()

    def heartbeat_request(self) -> kat_pb2.HeartbeatRequest:
        return kat_pb2.HeartbeatRequest(
            node_name=self.identity.name,
            capacity=self.capacity,
            allocatable=self.allocatable,
            labels=self.labels,
            advertise_address=self.identity.advertise_address,
            instances=self.instances(),
            wireguard_public_key=self.wireguard_public_key,
            overlay=self.overlay(),
            ingress=self.ingress(),
            agent_version=VERSION,
        )

    async def heartbeat_once(self) -> kat_pb2.HeartbeatResponse | None:
        """One beat on the long-lived heartbeat stream, reopening it as needed."""
        timeout = max(2.0, self.tick)
        try:
            if self._stream is None:
                self._stream = self.link.stub().Heartbeats()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            async with asyncio.timeout(timeout):
                await self._stream.write(self.heartbeat_request())
                resp = await self._stream.read()
            if resp is grpc.aio.EOF:
                raise ConnectionError("leader closed the heartbeat stream")
        except (grpc.RpcError, TimeoutError, ConnectionError, asyncio.InvalidStateError) as err:
            await self._stream_failed(err)
            return None
        assert isinstance(resp, kat_pb2.HeartbeatResponse)
        self.leader_node = resp.leader_node
        self._revoked_since = None
        if not self.connected.is_set():
            log.info("connected to leader %s", resp.leader_node)
            self.session += 1
            self.session_over = asyncio.Event()
            self.connected.set()
            self.on_link_change()
        if resp.api_endpoints and list(resp.api_endpoints) != self.identity.api_endpoints:
            self.link.update_endpoints(list(resp.api_endpoints))
            self.identity.api_endpoints = list(resp.api_endpoints)
            self.identity.save(self.datadir.identity_file)
        if resp.tick_seconds > 0:
            self.tick = resp.tick_seconds
        return resp

    async def _stream_failed(self, err: BaseException) -> None:
        stream, self._stream = self._stream, None
        code, trailing, details = None, None, str(err) or type(err).__name__
        if stream is not None:
            if stream.done():
                code, trailing = await stream.code(), await stream.trailing_metadata()
                details = await stream.details() or details
            else:
                stream.cancel()
        was_connected = self.connected.is_set()
        level = logging.WARNING if was_connected else logging.DEBUG
        self.connected.clear()
        self.session_over.set()
        if self.link.renewed and code in (None, grpc.StatusCode.CANCELLED):
            self.link.renewed = False
            log.info("heartbeat stream reopened with the renewed certificate")
            self._wake.set()  # beat again at once, on the same endpoint
            if was_connected:
                self.on_link_change()
            return
        log.log(level, "heartbeat failed (%s): %s", code.name if code else "no answer", details)
        self.link.failed(rpc.leader_from_status(code, trailing))
        if was_connected:
            self.on_link_change()
        self._note_revoked(any(k == rpc.REVOKED_KEY for k, _ in trailing or ()))

    def _note_revoked(self, revoked: bool) -> None:
        """One refusal is not enough (a leader that has just taken over could be
        wrong for a moment): refusals for REMOVED_AFTER_SECONDS without a beat accepted
        in between (other failures, such as a follower's redirect, do not count)."""
        now = time.monotonic()
        if not revoked:
            return
        if self._revoked_since is None:
            self._revoked_since = now
        elif now - self._revoked_since >= REMOVED_AFTER_SECONDS and not self.removed:
            log.warning("this node was removed from the cluster (its certificate is revoked)")
            self.removed = True
            self.on_removed()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                started = loop.time()
                # Cleared before the beat: a beat_now() during it asks for another.
                self._wake.clear()
                ok = await self.heartbeat_once()
                # After a failure try the next endpoint soon, but never spin.
                wait = self.tick if ok else min(1.0, self.tick)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait - (loop.time() - started))):
                        await self._wake.wait()
        finally:
            if self._stream is not None:
                self._stream.cancel()
            await self.link.close()
