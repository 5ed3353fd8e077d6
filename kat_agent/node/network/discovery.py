"""Service discovery on a node: follow the leader's endpoint view (`WatchEndpoints`), keep
the last one (in memory and in `agent/endpoints.pb`, so that a node restarted while the
leader is unreachable still answers), and hand every new view to the DNS server and to
whoever else listens (the ingress proxy on ingress nodes)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from api.v1alpha1 import kat_pb2
from kat_agent.node.agent import Agent
from kat_agent.node.assignments import SnapshotStore, follow_leader_stream
from kat_agent.node.network import records
from kat_agent.node.network.dns import DNS_PORT, DnsServer, upstreams_from_env
from kat_agent.node.network.records import node_dns_address

log = logging.getLogger(__name__)

ENDPOINTS_FILE = "endpoints.pb"

Listener = Callable[[kat_pb2.EndpointSet], None]


class Discovery:
    """The node's current endpoint view and the parts that act on it."""

    def __init__(self, state_dir: Path, domain: str) -> None:
        self.domain = domain
        self.store: SnapshotStore[kat_pb2.EndpointSet] = SnapshotStore(
            state_dir, ENDPOINTS_FILE, kat_pb2.EndpointSet
        )
        self.view = self.store.load() or kat_pb2.EndpointSet()
        self.listeners: list[Listener] = []
        self.changed = asyncio.Event()

    def add_listener(self, listener: Listener) -> None:
        self.listeners.append(listener)
        listener(self.view)

    def offer(self, view: kat_pb2.EndpointSet) -> None:
        """A view from the leader: act on it at once; saving it can lag behind."""
        if view.revision == self.view.revision and view == self.view:
            return
        self.view = view
        for listener in self.listeners:
            try:
                listener(view)
            except Exception:  # noqa: BLE001 - one broken consumer must not stop the others
                log.exception("endpoint listener failed")
        self.changed.set()

    async def watch(self, agent: Agent) -> None:
        request = kat_pb2.EndpointsRequest(node_name=agent.identity.name)

        def opened(view: kat_pb2.EndpointSet) -> str:
            return f"{len(view.services)} services, revision {view.revision}"

        await follow_leader_stream(
            agent, lambda stub: stub.WatchEndpoints(request), self.offer, "endpoints", opened
        )

    async def persist(self) -> None:
        """Write the latest view to disk after each change (off the event loop)."""
        while True:
            await self.changed.wait()
            self.changed.clear()
            try:
                await asyncio.to_thread(self.store.save, self.view)
            except OSError as exc:
                log.warning("cannot save the endpoint view: %s", exc)


def make_dns(discovery: Discovery, subnet: str, port: int = DNS_PORT) -> DnsServer:
    """The node's DNS server, fed by `discovery`."""
    address = node_dns_address(subnet)
    server = DnsServer(address, port, discovery.domain, upstreams_from_env(address))
    discovery.add_listener(
        lambda view: server.update(records.ZoneTable.build(discovery.domain, view.services))
    )
    return server
