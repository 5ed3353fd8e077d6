"""Entry point of the node runtime, started by every kat-agent next to its heartbeat
loop: the reconciler (kat_agent/node/instances.py), the assignments stream from the
leader, and the NodeAgent API (logs, exec, status)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence

from api.v1alpha1 import kat_pb2
from internal.host.datadir import DataDir, NodeIdentity
from kat_agent.node.agent import Agent
from kat_agent.node.assignments import watch_assignments
from kat_agent.node.instances import NodeRuntime
from kat_agent.node.network import firewall
from kat_agent.node.network.discovery import Discovery, make_dns
from kat_agent.node.network.dns import dns_port_from_env
from kat_agent.node.network.firewall import run_firewall
from kat_agent.node.network.ingress import CertFetcher, IngressProxy
from kat_agent.node.network.instance_net import BRIDGE, InstanceNetwork
from kat_agent.node.network.leave import Departure, until_left
from kat_agent.node.network.manager import Overlay
from kat_agent.node.network.overlay import removed_from_cluster
from kat_agent.node.node_api import NodeAgentService, start_node_api
from kat_agent.node.podman.services import NodeSettings

log = logging.getLogger(__name__)

SUPERVISE_BACKOFF = (1.0, 30.0)
OVERLAY_AFTER_PODMAN_SECONDS = 60.0  # the overlay starts anyway if Podman takes longer


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run `run` for ever: log and restart it (with back-off) when it fails, so that a
    broken part of the node runtime never takes the agent's heartbeats down with it."""
    low, high = SUPERVISE_BACKOFF
    delay = low
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        try:
            await run()
            log.error("%s ended unexpectedly; restarting in %.0fs", name, delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The agent is stopping and the part failed while cleaning up (e.g. a
                # workload user removed meanwhile): restarting it would swallow the
                # cancellation, and SIGTERM would no longer stop the agent.
                log.exception("%s failed while stopping", name)
                raise asyncio.CancelledError from None
            log.exception("%s failed; restarting in %.0fs", name, delay)
        if loop.time() - began > 60:
            delay = low
        await asyncio.sleep(delay)
        delay = min(high, delay * 2)


def rootless_pids(runtime: NodeRuntime) -> dict[str, int] | None:
    """Instance id -> pid of every running rootless container; None until the
    containers of earlier runs have been adopted (nothing may be released before)."""
    if not runtime.ready.is_set():
        return None
    return {
        iid: st.observed.pid
        for iid, st in runtime.states.items()
        if st.backend is not None
        and st.backend.rootless
        and st.observed is not None
        and st.observed.running
        and st.observed.pid
    }


async def serve_node_api(dd: DataDir, address: str, runtime: NodeRuntime, agent: Agent) -> None:
    service = NodeAgentService(runtime, lambda: agent.leader_node, agent.heartbeat_request)
    server = await start_node_api(
        service,
        address,
        dd.node_cert.read_bytes(),
        dd.node_key.read_bytes(),
        dd.ca_cert.read_bytes(),
        pair=agent.node_pair,
    )
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=1)


def ingress_cert_fetcher(agent: Agent, node_name: str) -> CertFetcher:
    """The ingress node's certificates (with keys) for its tls hosts, from the leader."""

    async def fetch(hosts: Sequence[str]) -> list[kat_pb2.IngressKeyPair]:
        if not agent.connected.is_set():
            raise RuntimeError("the leader is not reachable")
        request = kat_pb2.IngressCertificatesRequest(node_name=node_name, hosts=hosts)
        answer = await agent.link.stub().GetIngressCertificates(request, timeout=10)
        return list(answer.items)

    return fetch


def node_network_enabled() -> bool:
    return os.environ.get("KAT_NODE_NETWORK", "on").lower() not in ("off", "0", "no")


async def run_node(
    dd: DataDir,
    identity: NodeIdentity,
    agent: Agent,
    config: kat_pb2.ClusterConfiguration,
    *,
    rootless: bool | None = None,
) -> None:
    """The node runtime of one kat-agent. `rootless` None: env KAT_ROOTLESS (default on)."""
    settings = NodeSettings.for_node(dd, identity, config, rootless)
    log.info(
        "node runtime: %s workloads, subnet %s, volumes under %s",
        "rootless" if settings.rootless else "root",
        settings.subnet or "(none)",
        settings.volume_base_path,
    )
    address = f"{identity.advertise_address}:{config.spec.agent_port}"
    if not node_network_enabled():
        # An agent sharing the host's network namespace with others (the leader of the
        # etcd-tier tests, benchmarks): no overlay interface, firewall table, DNS or
        # ingress, which are per host and would outlive it or collide with a real node's.
        log.warning("node network off (KAT_NODE_NETWORK=off): no overlay, firewall, DNS")
        await serve_node(settings, dd, agent, address)
        return
    overlay = Overlay(dd, identity, config.spec) if identity.subnet else None
    instance_net = None
    if overlay is not None and settings.rootless:
        instance_net = InstanceNetwork(
            identity.subnet,
            config.spec.cluster_cidr,
            settings.state_dir / "instance-addresses.json",
            mtu=await overlay.mtu(),
        )
    discovery = Discovery(settings.state_dir, settings.cluster_domain)
    ingress = IngressProxy(
        identity.name,
        dd.ingress_dir,
        config.spec.ingress_http_port,
        config.spec.ingress_https_port,
        ingress_cert_fetcher(agent, identity.name),
    )
    departure = Departure(dd.left_marker)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(
            until_left(
                departure,
                lambda: supervise("control-port firewall", lambda: run_firewall(config.spec)),
                firewall.remove,
                f"the nftables table {firewall.TABLE}",
            ),
            name="node-firewall",
        )
        await serve_node(
            settings,
            dd,
            agent,
            address,
            overlay=overlay,
            instance_net=instance_net,
            discovery=discovery,
            ingress=ingress,
            departure=departure,
        )


async def serve_node(
    settings: NodeSettings,
    dd: DataDir,
    agent: Agent,
    address: str,
    runtime: NodeRuntime | None = None,
    *,
    overlay: Overlay | None = None,
    instance_net: InstanceNetwork | None = None,
    discovery: Discovery | None = None,
    ingress: IngressProxy | None = None,
    departure: Departure | None = None,
) -> None:
    """The parts of the node runtime, each restarted on failure: the reconciler, the
    assignments stream feeding it, the NodeAgent API on `address`, the overlay, and with
    `discovery` the endpoints stream, the node's DNS server (on its subnet's first address)
    and, on ingress nodes, the HAProxy that `ingress` drives."""
    runtime = runtime or NodeRuntime(settings, agent.beat_now)
    agent.instances = runtime.report
    runtime.detached = lambda: not agent.connected.is_set()
    agent.on_link_change = runtime.link_changed
    if overlay is not None:
        agent.overlay = overlay.status
        agent.wireguard_public_key = overlay.public_key
        overlay.on_change = agent.beat_now
    if instance_net is not None:
        runtime.plumbed_ip = instance_net.address_of
        runtime.plumbs_rootless = True
        instance_net.on_change = agent.beat_now

    departure = departure or Departure(dd.left_marker)
    if overlay is not None:
        agent.on_removed = departure.leave

    def on_snapshot(snapshot: kat_pb2.AssignmentSet) -> None:
        if overlay is not None:
            overlay.offer(snapshot)
            if removed_from_cluster(agent.identity.name, snapshot):
                departure.leave()
        runtime.offer(snapshot)

    async with asyncio.TaskGroup() as tg:
        if overlay is not None:
            ov = overlay

            async def run_overlay() -> None:
                # After Podman has its `kat` network: Podman refuses to create a network
                # whose subnet an interface of the host already has an address in, and
                # the overlay puts the node's address (in that subnet) on its interface.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(OVERLAY_AFTER_PODMAN_SECONDS):
                        await runtime.pool.network_ready.wait()
                await supervise("overlay", ov.run)

            tg.create_task(
                until_left(departure, run_overlay, ov.remove, f"interface {ov.interface}"),
                name="node-overlay",
            )
        if instance_net is not None:
            net = instance_net
            tg.create_task(
                until_left(
                    departure,
                    lambda: supervise(
                        "instance network", lambda: net.run(lambda: rootless_pids(runtime))
                    ),
                    net.remove_all,
                    f"bridge {BRIDGE} and the instance veths",
                ),
                name="node-instance-network",
            )
        tg.create_task(supervise("node runtime", runtime.run), name="node-runtime")
        tg.create_task(
            supervise("assignments stream", lambda: watch_assignments(agent, on_snapshot)),
            name="node-assignments",
        )
        tg.create_task(
            supervise("NodeAgent API", lambda: serve_node_api(dd, address, runtime, agent)),
            name="node-api",
        )
        if discovery is not None:
            d = discovery
            tg.create_task(supervise("endpoints stream", lambda: d.watch(agent)), name="endpoints")
            tg.create_task(supervise("endpoints file", d.persist), name="endpoints-file")
            if settings.subnet:
                dns = make_dns(d, settings.subnet, dns_port_from_env())
                tg.create_task(supervise("DNS server", dns.serve), name="dns")
            if ingress is not None:
                # Runs HAProxy only while the view lists this node as an ingress node.
                d.add_listener(ingress.offer)
                agent.ingress = ingress.status
                ingress.on_problem = agent.beat_now
                ing = ingress
                tg.create_task(
                    until_left(
                        departure,
                        lambda: supervise("ingress proxy", ing.run),
                        ing.forget,
                        "the ingress proxy and its keys",
                    ),
                    name="ingress",
                )
