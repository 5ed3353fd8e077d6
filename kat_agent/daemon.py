"""Running a node: `init` (first member), `join` (every other node), and
restarting either from its data dir. One asyncio TaskGroup per process holds
etcd supervision, the API server, the election and the agent loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal import clientconfig, pki, resources, rpc, tokens
from internal.fileutil import write_atomic
from kat_agent import bootstrap
from kat_agent.agent import Agent, machine_resources
from kat_agent.datadir import DataDir, NodeIdentity
from kat_agent.node.main import run_node

if TYPE_CHECKING:
    from internal.etcd_process import EtcdProcess

log = logging.getLogger(__name__)


LEADER_TTL_SECONDS = 10


class StartupError(Exception):
    """A problem that stops the agent from starting, worded for the operator."""


@dataclass
class NodeOptions:
    data_dir: Path
    advertise_address: str = ""
    node_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    etcd_binary: str | None = None


def default_advertise_address() -> str:
    """The address of the interface holding the default route."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        return str(s.getsockname()[0])
    return "127.0.0.1"


def _config_copy(dd: DataDir) -> Path:
    # A local copy of the stored cluster configuration: etcd's ports must be
    # known before etcd (and so the stored original) is reachable.
    return dd.root / "agent" / "cluster-config.pb"


def load_local_config(dd: DataDir) -> kat_pb2.ClusterConfiguration:
    cfg = kat_pb2.ClusterConfiguration()
    cfg.ParseFromString(_config_copy(dd).read_bytes())
    return cfg


# ---------------------------------------------------------------- init


async def run_init(config_path: Path | None, opts: NodeOptions) -> None:
    from internal.etcd import EtcdClient
    from internal.etcd_process import EtcdStartError
    from internal.store import Store

    dd = DataDir(opts.data_dir)
    dd.create()
    identity = NodeIdentity.load(dd.identity_file)
    if identity is None and _config_copy(dd).exists():
        config = load_local_config(dd)
    elif identity is None:
        if config_path is None:
            raise StartupError("init needs --config cluster.kat on a new data dir")
        try:
            config = resources.load_cluster_config(config_path)
        except resources.ValidationError as exc:
            raise StartupError(str(exc)) from None
        write_atomic(_config_copy(dd), config.SerializeToString(), 0o600)
    else:
        config = load_local_config(dd)
        if config_path is not None:
            log.info(
                "data dir %s is initialised; resuming (cluster.kat is only read once)", dd.root
            )
    advertise = (
        identity.advertise_address
        if identity
        else (opts.advertise_address or default_advertise_address())
    )
    name = identity.name if identity else (opts.node_name or socket.gethostname())

    ca = bootstrap.ensure_cluster_pki(dd)
    bootstrap.ensure_etcd_certs(dd, name, advertise)
    etcd = etcd_process_for(dd, config.spec, name, advertise, opts.etcd_binary)
    async with contextlib.AsyncExitStack() as stack:
        await etcd.start()
        stack.push_async_callback(etcd.stop)
        try:
            await etcd.wait_healthy()
        except EtcdStartError as exc:
            raise StartupError(f"etcd did not start: {exc}") from None
        client = EtcdClient(
            [etcd.local_endpoint],
            ca_file=etcd.tls.ca_file,
            cert_file=etcd.tls.client_cert_file,
            key_file=etcd.tls.client_key_file,
        )
        stack.push_async_callback(client.close)
        store = Store(client)
        if identity is None:
            identity, join_token = await first_init(dd, store, config, ca, name, advertise, opts)
            leader = identity.api_endpoints[0]
            print(f"KAT cluster initialised. Node {identity.name} leads at {leader}.", flush=True)
            print(f"katcall config (admin, keep it private): {dd.admin_config}", flush=True)
            print("Join other nodes with:", flush=True)
            print(
                f"  kat-agent join --leader {identity.api_endpoints[0]} --token {join_token}",
                flush=True,
            )
        else:
            log.info("resuming node %s from %s", identity.name, dd.root)
        await serve(dd, identity, store, opts)


async def first_init(
    dd: DataDir,
    store: object,
    config: kat_pb2.ClusterConfiguration,
    ca: pki.CertAndKey,
    name: str,
    advertise: str,
    opts: NodeOptions,
) -> tuple[NodeIdentity, str]:
    from internal.store import AlreadyExists, Store
    from kat_agent.leader.agent_api import register_node
    from kat_agent.leader.cluster_api import new_namespace
    from kat_agent.leader.context import LeaderContext
    from kat_agent.leader.nodes import NodeRegistry

    assert isinstance(store, Store)
    stored = await store.get_cluster_config()
    if stored is None:
        await store.put_cluster_config(config)
    else:
        config = stored.msg
    cluster_uid = await store.ensure_cluster_uid(str(uuid.uuid4()))
    with contextlib.suppress(AlreadyExists):
        await store.create_namespace(new_namespace("default"))
    spec = config.spec
    registry = NodeRegistry(store, spec)
    api = f"{advertise}:{spec.api_port}"
    lc = LeaderContext(store, config, cluster_uid, name, api, ca.cert_pem, ca.key_pem, registry)
    node = kat_pb2.Node(api_version=resources.API_VERSION, kind="Node")
    node.metadata.uid = str(uuid.uuid4())
    node.metadata.labels.update(opts.labels)
    node.metadata.creation_timestamp.FromDatetime(datetime.now(UTC))
    capacity, allocatable = machine_resources()
    node.status.advertise_address = advertise
    node.status.capacity.CopyFrom(capacity)
    node.status.allocatable.CopyFrom(allocatable)
    node.status.etcd_member = True
    node.status.agent_port = spec.agent_port
    node.status.condition = kat_pb2.NodeStatus.UNKNOWN
    node = await register_node(lc, node, name)
    name = node.metadata.name
    bootstrap.issue_node_certificate(dd, ca, name, advertise)

    admin = bootstrap.issue_admin_certificate(ca)
    cfg = clientconfig.ClientConfig()
    cfg.upsert(
        clientconfig.Context(
            config.metadata.name or "kat", [api], ca.cert_pem, admin.cert_pem, admin.key_pem
        )
    )
    clientconfig.save(cfg, dd.admin_config)

    record, join_token = tokens.new_token(
        pki.ca_hash(ca.cert_pem),
        spec.join_port,
        now=datetime.now(UTC),
        description="created by init",
    )
    await store.create_token(record)
    identity = NodeIdentity(
        name=name,
        uid=node.metadata.uid,
        cluster_uid=cluster_uid,
        advertise_address=advertise,
        api_endpoints=[api],
        subnet=node.status.subnet,
        etcd_member=True,
    )
    identity.save(dd.identity_file)
    return identity, join_token


def etcd_process_for(
    dd: DataDir,
    spec: kat_pb2.ClusterConfigurationSpec,
    name: str,
    advertise: str,
    binary: str | None,
) -> EtcdProcess:
    from internal.etcd_process import EtcdProcess, EtcdTLS

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
    )


# ---------------------------------------------------------------- join


async def run_join(leader: str, token: str, opts: NodeOptions) -> None:
    dd = DataDir(opts.data_dir)
    dd.create()
    identity = NodeIdentity.load(dd.identity_file)
    if identity is None:
        advertise = opts.advertise_address or default_advertise_address()
        capacity, _ = machine_resources()
        req = kat_pb2.JoinRequest(
            advertise_address=advertise,
            hostname=opts.node_name or socket.gethostname(),
            labels=opts.labels,
            capacity=capacity,
        )
        try:
            resp = await bootstrap.join_cluster(dd, leader, token, req)
        except bootstrap.JoinError as exc:
            raise StartupError(str(exc)) from None
        identity = NodeIdentity(
            name=resp.node.metadata.name,
            uid=resp.node.metadata.uid,
            cluster_uid=resp.cluster_uid,
            advertise_address=advertise,
            api_endpoints=list(resp.api_endpoints),
            subnet=resp.node.status.subnet,
        )
        write_atomic(_config_copy(dd), resp.configuration.SerializeToString(), 0o600)
        identity.save(dd.identity_file)
        print(
            f"joined cluster {resp.cluster_uid} as node {identity.name} (subnet {identity.subnet})",
            flush=True,
        )
    else:
        log.info(
            "resuming node %s from %s (already joined; token not needed)", identity.name, dd.root
        )
    await serve(dd, identity, None, opts)


# ---------------------------------------------------------------- serving


async def serve(
    dd: DataDir, identity: NodeIdentity, store: object | None, opts: NodeOptions
) -> None:
    config = load_local_config(dd)
    agent = Agent(dd, identity, config.spec.agent_tick_seconds, opts.labels)
    async with asyncio.TaskGroup() as tg:
        if store is not None:
            tg.create_task(run_member(dd, identity, store, config), name="member")
        tg.create_task(agent.run(), name="agent")
        tg.create_task(run_node(dd, identity, agent, config), name="node-runtime")


async def run_member(
    dd: DataDir, identity: NodeIdentity, store: object, config: kat_pb2.ClusterConfiguration
) -> None:
    """API server, election and leader-only controllers on an etcd member."""
    from internal.election import Election, LeaderInfo
    from internal.store import Store
    from kat_agent.leader.agent_api import AgentAPI
    from kat_agent.leader.cluster_api import ClusterAPI
    from kat_agent.leader.context import LeaderContext
    from kat_agent.leader.nodes import NodeRegistry

    assert isinstance(store, Store)
    stored = await store.get_cluster_config()
    config = stored.msg if stored else config
    cluster_uid = await store.get_cluster_uid() or identity.cluster_uid
    spec = config.spec
    ca_cert = dd.ca_cert.read_bytes()
    ca_key = dd.ca_key.read_bytes() if dd.ca_key.exists() else None
    api = f"{identity.advertise_address}:{spec.api_port}"
    registry = NodeRegistry(store, spec)
    lc = LeaderContext(store, config, cluster_uid, identity.name, api, ca_cert, ca_key, registry)
    lc.ca_hash = pki.ca_hash(ca_cert)

    server = grpc.aio.server(options=rpc.SERVER_OPTIONS)
    kat_pb2_grpc.add_ClusterAPIServicer_to_server(ClusterAPI(lc), server)
    kat_pb2_grpc.add_AgentAPIServicer_to_server(AgentAPI(lc), server)
    node_cert, node_key = dd.node_cert.read_bytes(), dd.node_key.read_bytes()
    server.add_secure_port(api, rpc.mtls_server_credentials(node_cert, node_key, ca_cert))
    if ca_key is not None:
        join = f"{identity.advertise_address}:{spec.join_port}"
        server.add_secure_port(join, rpc.tls_server_credentials(ca_cert, ca_key))
    await server.start()
    log.info("API serving on %s (join port %s)", api, spec.join_port)

    async def lead() -> None:
        await registry.load()
        lc.leading = True
        lc.leader_address = api
        log.info("%s is the leader", identity.name)
        from kat_agent.leader.controllers import run_controllers

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(registry.run_health(), name="node-health")
                tg.create_task(run_controllers(lc), name="controllers")
        finally:
            lc.leading = False
            log.warning("%s stopped leading", identity.name)

    def on_leader(info: LeaderInfo | None) -> None:
        lc.leader_address = info.api_address if info else ""

    election = Election(store, identity.name, api, ttl=LEADER_TTL_SECONDS, on_change=on_leader)
    try:
        await election.run(lead)
    finally:
        await election.resign()
        await server.stop(grace=1)
