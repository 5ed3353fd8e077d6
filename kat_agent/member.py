"""What runs on an etcd member: the supervised etcd, the store on it, and the
API server, election and leader-only work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Literal

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.host.datadir import DataDir, NodeIdentity
from internal.observability import metrics
from internal.security import rpc
from internal.state.etcd import EtcdClient
from internal.state.etcd_process import EtcdProcess, EtcdStartError, EtcdTLS
from internal.state.store import Store

log = logging.getLogger(__name__)


class MemberStartError(Exception):
    pass


def leader_ttl(spec: kat_pb2.ClusterConfigurationSpec) -> int:
    """The election lease: short enough that failover fits within a node-loss
    timeout, at least 3 s so that a busy leader does not lose it by accident."""
    return max(3, min(10, spec.node_loss_timeout_seconds))


def etcd_process_for(
    dd: DataDir,
    spec: kat_pb2.ClusterConfigurationSpec,
    name: str,
    advertise: str,
    binary: str | None,
    initial_cluster: Mapping[str, str] | None = None,
    state: Literal["new", "existing"] = "new",
) -> EtcdProcess:
    p = dd.etcd_pki
    tls = EtcdTLS(
        ca_file=p / "ca.crt",
        cert_file=p / "server.crt",
        key_file=p / "server.key",
        client_cert_file=p / "client.crt",
        client_key_file=p / "client.key",
    )
    return EtcdProcess(
        name=name,
        data_dir=dd.etcd_data,
        client_urls=[f"https://{advertise}:{spec.etcd_client_port}"],
        peer_urls=[f"https://{advertise}:{spec.etcd_peer_port}"],
        tls=tls,
        binary=binary,
        initial_cluster=dict(initial_cluster) if initial_cluster else None,
        initial_cluster_state=state,
    )


@contextlib.asynccontextmanager
async def member_store(
    dd: DataDir,
    spec: kat_pb2.ClusterConfigurationSpec,
    name: str,
    advertise: str,
    binary: str | None,
    initial_cluster: Mapping[str, str] | None = None,
    state: Literal["new", "existing"] = "new",
) -> AsyncIterator[Store]:
    """A running, healthy local etcd member and a Store on it; stopped on exit."""
    from internal.core import certlife
    from kat_agent.etcd_certs import ensure_before_start

    # Made at init, renewed if due (a member down past two thirds of their life).
    ensure_before_start(dd, name, advertise, certlife.lifetime(spec))
    etcd = etcd_process_for(dd, spec, name, advertise, binary, initial_cluster, state)
    await etcd.start()
    try:
        try:
            await etcd.wait_healthy()
        except EtcdStartError as exc:
            raise MemberStartError(f"etcd did not start: {exc}") from None
        client = EtcdClient(
            [etcd.local_endpoint],
            ca_file=etcd.tls.ca_file,
            cert_file=etcd.tls.client_cert_file,
            key_file=etcd.tls.client_key_file,
        )
        try:
            yield Store(client)
        finally:
            await client.close()
    finally:
        await etcd.stop()


async def run_member(
    dd: DataDir, identity: NodeIdentity, store: Store, config: kat_pb2.ClusterConfiguration
) -> None:
    """API server, election and leader-only controllers on an etcd member."""
    from internal.state.election import Election, LeaderInfo
    from kat_agent.leader.agent_api import AgentAPI
    from kat_agent.leader.backups import run_backups
    from kat_agent.leader.cluster_api import ClusterAPI
    from kat_agent.leader.context import build_leader_context
    from kat_agent.leader.controllers import run_controllers
    from kat_agent.leader.raft_leader import PROBE_TIMEOUT, keep_raft_leader_elsewhere, status_probe

    stored = await store.get_cluster_config()
    config = stored.msg if stored else config
    cluster_uid = await store.get_cluster_uid() or identity.cluster_uid
    spec = config.spec
    api = f"{identity.advertise_address}:{spec.api_port}"
    lc = build_leader_context(dd, store, config, cluster_uid, identity.name, api)
    registry, ca_cert, ca_key = lc.registry, lc.ca_cert, lc.ca_key

    from internal.observability.grpc_metrics import MetricsInterceptor
    from kat_agent.leader.audit import AuditInterceptor, run_audit_pruning

    interceptors = [MetricsInterceptor(), AuditInterceptor(lc, dd.audit_log)]
    server = grpc.aio.server(options=rpc.SERVER_OPTIONS, interceptors=interceptors)
    agent_api = AgentAPI(lc)
    kat_pb2_grpc.add_ClusterAPIServicer_to_server(ClusterAPI(lc), server)
    kat_pb2_grpc.add_AgentAPIServicer_to_server(agent_api, server)
    # The API is served with this member's own kat:api certificate (clients check its
    # name, see rpc.API_SERVER_NAME), re-read on every handshake once renewed.
    from internal.security.certfiles import KeyPairFile
    from kat_agent.etcd_certs import run_etcd_certificate_renewal
    from kat_agent.renewal import ensure_api_certificate, run_api_certificate_renewal

    await ensure_api_certificate(lc, dd, identity.advertise_address)
    api_pair = KeyPairFile(dd.api_cert, dd.api_key)
    server.add_secure_port(api, api_pair.server_credentials(ca_cert))
    # The join port takes calls without a client certificate: its own server, with
    # a small message limit (a join request is a few KB) and few concurrent calls.
    join_server = grpc.aio.server(
        options=rpc.JOIN_SERVER_OPTIONS, maximum_concurrent_rpcs=rpc.JOIN_MAX_CONCURRENT
    )
    kat_pb2_grpc.add_AgentAPIServicer_to_server(agent_api, join_server)
    if ca_key is not None:
        from kat_agent.bootstrap import issue_join_certificate

        join = f"{identity.advertise_address}:{spec.join_port}"
        served = issue_join_certificate(ca_cert, ca_key, identity.advertise_address)
        join_server.add_secure_port(
            join, rpc.tls_server_credentials(served.cert_pem, served.key_pem)
        )
    await server.start()
    await join_server.start()
    log.info("API serving on %s (join port %s)", api, spec.join_port)

    def other_member(urls: Sequence[str]) -> EtcdClient:
        """A client for another etcd member, with this member's etcd client certificate."""
        p = dd.etcd_pki
        return EtcdClient(
            urls,
            ca_file=p / "ca.crt",
            cert_file=p / "client.crt",
            key_file=p / "client.key",
            timeout=PROBE_TIMEOUT,
        )

    async def lead() -> None:
        loading = time.monotonic()
        await registry.load()
        lc.leading = True
        lc.leader_address = api
        metrics.ELECTIONS_WON.inc()
        metrics.LEADER.set(1)
        log.info(
            "%s is the leader (%d nodes loaded in %.3fs)",
            identity.name,
            len(registry.names()),
            time.monotonic() - loading,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(registry.run_health(), name="node-health")
                tg.create_task(run_controllers(lc), name="controllers")
                tg.create_task(run_backups(lc), name="backups")
                tg.create_task(run_audit_pruning(lc), name="audit-pruning")
                # Off this member: a crash of this node must not also cost a raft election.
                tg.create_task(
                    keep_raft_leader_elsewhere(store.etcd, status_probe(other_member)),
                    name="raft-leader",
                )
        finally:
            lc.leading = False
            metrics.LEADER.set(0)
            metrics.NODES.clear()  # leader-only figures: absent on followers
            metrics.CLUSTER_INSTANCES.clear()
            log.warning("%s stopped leading", identity.name)

    def on_leader(info: LeaderInfo | None) -> None:
        lc.leader_address = info.api_address if info else ""

    election = Election(store, identity.name, api, ttl=leader_ttl(spec), on_change=on_leader)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(lc.watch_quorum(), name="quorum")
            tg.create_task(
                run_api_certificate_renewal(lc, dd, identity.advertise_address),
                name="api-certificate",
            )
            tg.create_task(
                run_etcd_certificate_renewal(lc, dd, identity.advertise_address, store.etcd),
                name="etcd-certificates",
            )
            tg.create_task(lc.revocations.run(), name="revocations")
            tg.create_task(election.run(lead), name="election")
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await election.resign()
        await join_server.stop(grace=1)
        await server.stop(grace=1)
