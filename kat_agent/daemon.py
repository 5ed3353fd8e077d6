"""Running a node: `init` (first member), `join` (every other node), and
restarting either from its data dir. One asyncio TaskGroup per process holds
etcd supervision, the API server, the election and the agent loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from api.v1alpha1 import kat_pb2
from internal.host.datadir import DataDir, NodeIdentity
from internal.host.files import write_atomic
from kat_agent.node.agent import Agent, machine_resources
from kat_agent.node.main import run_node

if TYPE_CHECKING:
    from internal.state.store import Store

log = logging.getLogger(__name__)


DEFAULT_CLUSTER_KAT = (
    b"apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {name: kat}\n"
)


class StartupError(Exception):
    """A problem that stops the agent from starting, worded for the operator."""


@dataclass
class NodeOptions:
    data_dir: Path
    advertise_address: str = ""
    node_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    etcd_binary: str | None = None
    # Workloads as their own users with rootless Podman; None: env KAT_ROOTLESS, default on.
    rootless: bool | None = None
    etcd_member: bool = False
    # Only the real command line re-executes itself after a join (not tests or embedders).
    reexec_after_join: bool = False


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


def _initial_cluster_file(dd: DataDir) -> Path:
    # The etcd members a joining member starts with (only read on its first start).
    return dd.root / "agent" / "etcd-initial-cluster.json"


# ---------------------------------------------------------------- init


async def run_init(
    config_path: Path | None,
    opts: NodeOptions,
    restore_from: Path | None = None,
    cluster_secret_file: Path | None = None,
) -> None:
    from internal.manifests import resources
    from internal.security import sealing
    from kat_agent import bootstrap
    from kat_agent.member import MemberStartError, member_store

    dd = DataDir(opts.data_dir)
    dd.create()
    identity = NodeIdentity.load(dd.identity_file)
    if identity is not None:
        config = load_local_config(dd)
        if config_path is not None or restore_from is not None:
            log.info("data dir %s is initialised; resuming (init options are not reread)", dd.root)
    elif _config_copy(dd).exists():
        config = load_local_config(dd)
    elif restore_from is not None and config_path is None:
        # The snapshot holds the real configuration; until etcd runs, its
        # ports are taken to be the defaults (pass --config if they differ).
        config = resources.load_cluster_config(DEFAULT_CLUSTER_KAT, "defaults")
    else:
        config = _read_cluster_kat(config_path)
        write_atomic(_config_copy(dd), config.SerializeToString(), 0o600)
    advertise = (
        identity.advertise_address
        if identity
        else (opts.advertise_address or default_advertise_address())
    )
    name = identity.name if identity else (opts.node_name or socket.gethostname())
    failed_restore = ""

    restoring = identity is None and restore_from is not None
    secret = b""
    if restoring:
        assert restore_from is not None
        # Asked for before anything is restored: the snapshot's CA keys are sealed.
        if cluster_secret_file is None:
            raise StartupError(
                "restoring a snapshot needs --cluster-secret-file: the CA keys in it are "
                "sealed with the cluster secret (pki/cluster-secret of any etcd member; "
                "see docs/security.md)"
            )
        try:
            secret = sealing.read_secret(cluster_secret_file)
        except sealing.SecretError as exc:
            raise StartupError(str(exc)) from None
        bootstrap.ensure_etcd_ca(dd)  # the snapshot brings the cluster CA
        await restore_snapshot(dd, restore_from, config.spec, name, advertise)
    else:
        bootstrap.ensure_cluster_pki(dd)
    # etcd's certificates are made (or renewed) by member_store, before etcd starts.
    try:
        async with member_store(dd, config.spec, name, advertise, opts.etcd_binary) as store:
            if identity is None:
                if restoring:
                    try:
                        identity, join_token = await restored_init(
                            dd, store, name, advertise, opts, secret
                        )
                    except sealing.SecretError as exc:
                        failed_restore = str(exc)
                        raise StartupError(str(exc)) from None
                    print(f"KAT cluster restored from {restore_from}.", flush=True)
                else:
                    identity, join_token = await first_init(
                        dd, store, config, name, advertise, opts
                    )
                    print("KAT cluster initialised.", flush=True)
                leader = identity.api_endpoints[0]
                print(f"Node {identity.name} leads at {leader}.", flush=True)
                print(f"katcall config (admin, keep it private): {dd.admin_config}", flush=True)
                show_join_command(dd, f"kat-agent join --leader {leader} --token {join_token}")
            else:
                log.info("resuming node %s from %s", identity.name, dd.root)
                await _seal_clear_material(dd, store)
            await serve(dd, identity, store, opts)
    except MemberStartError as exc:
        raise StartupError(str(exc)) from None
    finally:
        if failed_restore:
            # Nothing of a refused restore stays: the same command can be run again.
            await asyncio.to_thread(shutil.rmtree, dd.etcd_data, True)


def _read_cluster_kat(config_path: Path | None) -> kat_pb2.ClusterConfiguration:
    from internal.manifests import resources

    if config_path is None:
        raise StartupError("init needs --config cluster.kat on a new data dir")
    try:
        return resources.load_cluster_config(config_path)
    except resources.ValidationError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot read {config_path}: {exc.strerror}") from None


def _new_node(
    name_hint: str,
    advertise: str,
    spec: kat_pb2.ClusterConfigurationSpec,
    opts: NodeOptions,
    dd: DataDir,
) -> kat_pb2.Node:
    from internal.manifests import resources
    from kat_agent.node.network.keys import ensure_keypair

    node = kat_pb2.Node(api_version=resources.API_VERSION, kind="Node")
    node.metadata.name = name_hint
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
    node.status.wireguard_public_key = ensure_keypair(dd.wireguard_key)
    return node


def show_join_command(dd: DataDir, command: str) -> None:
    """The join command holds a live token: it goes to a 0600 file in the data dir
    and to init's terminal, never into a log (stdout is one when it is not a tty)."""
    write_atomic(dd.join_command, f"{command}\n".encode(), 0o600)
    if sys.stdout.isatty():
        print("Join other nodes (workers) with:", flush=True)
        print(f"  {command}", flush=True)
    else:
        print(f"Join command (holds a token; keep it private): {dd.join_command}", flush=True)
    print("etcd members need a token from `katcall token create --etcd-member`.", flush=True)


async def _finish_local_identity(
    dd: DataDir,
    store: Store,
    config: kat_pb2.ClusterConfiguration,
    node: kat_pb2.Node,
    cluster_uid: str,
    advertise: str,
) -> tuple[NodeIdentity, str]:
    """Node and admin certificates, the katcall config, a join token, node.json."""
    from internal.core import tokens
    from internal.security import clientconfig, pki
    from kat_agent import bootstrap

    spec = config.spec
    ca = pki.read_pair(dd.ca_cert, dd.ca_key)
    name = node.metadata.name
    api = f"{advertise}:{spec.api_port}"
    from internal.core import certlife
    from kat_agent.leader.admin_api import record_admin_certificate
    from kat_agent.leader.inventory import record_issued

    life = certlife.lifetime(spec)
    node_cert = bootstrap.issue_node_certificate(dd, ca, name, advertise, lifetime=life)
    admin = bootstrap.issue_admin_certificate(ca, lifetime=life)
    await record_admin_certificate(store, "admin", admin.cert_pem, "init")
    await record_issued(store, node_cert, "init")
    await record_issued(store, admin.cert_pem, "init")
    cfg = clientconfig.ClientConfig()
    context = config.metadata.name or "kat"
    cfg.upsert(clientconfig.Context(context, [api], ca.cert_pem, admin.cert_pem, admin.key_pem))
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


async def first_init(
    dd: DataDir,
    store: Store,
    config: kat_pb2.ClusterConfiguration,
    name: str,
    advertise: str,
    opts: NodeOptions,
) -> tuple[NodeIdentity, str]:
    from internal.manifests.defaults import new_namespace
    from internal.state.kv import AlreadyExists
    from kat_agent import bootstrap
    from kat_agent.leader.agent_api import register_node
    from kat_agent.leader.nodes import NodeRegistry

    stored = await store.get_cluster_config()
    if stored is None:
        await store.put_cluster_config(config)
    else:
        config = stored.msg
    cluster_uid = await store.ensure_cluster_uid(str(uuid.uuid4()))
    await store.ensure_ca_material(bootstrap.ca_material(dd))
    with contextlib.suppress(AlreadyExists):
        await store.create_namespace(new_namespace("default", datetime.now(UTC)))
    registry = NodeRegistry(store, config.spec)
    node = _new_node(name, advertise, config.spec, opts, dd)
    node = await register_node(store, registry, config.spec, node, name)
    return await _finish_local_identity(dd, store, config, node, cluster_uid, advertise)


def _check_restore_inputs(dd: DataDir, snapshot: Path) -> None:
    if dd.etcd_data.exists() and any(dd.etcd_data.iterdir()):
        raise StartupError(f"{dd.etcd_data} is not empty; restore into a fresh data dir")
    if not snapshot.is_file():
        raise StartupError(f"snapshot {snapshot} not found")


async def restore_snapshot(
    dd: DataDir, snapshot: Path, spec: kat_pb2.ClusterConfigurationSpec, name: str, advertise: str
) -> None:
    """Turn an etcd snapshot into this node's etcd data dir, as a one-member cluster."""
    await asyncio.to_thread(_check_restore_inputs, dd, snapshot)
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        raise StartupError("etcdctl is needed to restore a snapshot (Debian package etcd-client)")
    peer = f"https://{advertise}:{spec.etcd_peer_port}"
    proc = await asyncio.create_subprocess_exec(
        etcdctl,
        "snapshot",
        "restore",
        str(snapshot),
        f"--data-dir={dd.etcd_data}",
        f"--name={name}",
        f"--initial-cluster={name}={peer}",
        f"--initial-advertise-peer-urls={peer}",
        "--initial-cluster-token=kat",
        env={**os.environ, "ETCDCTL_API": "3"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise StartupError(f"restoring {snapshot} failed: {out.decode(errors='replace').strip()}")
    dd.etcd_data.chmod(0o700)


async def restored_init(
    dd: DataDir, store: Store, name: str, advertise: str, opts: NodeOptions, secret: bytes
) -> tuple[NodeIdentity, str]:
    """Take over a restored cluster: its CA, configuration and records; this node
    becomes its only etcd member (other members must join again). `secret` opens the
    snapshot's CA keys (SecretError if it does not); a snapshot from before sealing
    gets its keys sealed with it."""
    from internal.security import sealing
    from kat_agent import bootstrap

    material = await store.get_ca_material()
    stored = await store.get_cluster_config()
    cluster_uid = await store.get_cluster_uid()
    if material is None or stored is None or cluster_uid is None:
        raise StartupError("the snapshot holds no KAT cluster (no CA, configuration or UID)")
    bootstrap.write_ca_material(dd, material, secret, etcd=False)
    sealing.write_secret(dd.cluster_secret, secret)
    await store.replace_ca_material(bootstrap.ca_material(dd))
    config = stored.msg
    write_atomic(_config_copy(dd), config.SerializeToString(), 0o600)
    for other in await store.list_nodes():
        if other.msg.status.etcd_member and other.msg.metadata.name != name:
            other.msg.status.etcd_member = False
            await store.update_node(other.msg, other.mod_revision)
    existing = await store.get_node(name)
    if existing is not None:
        node = existing.msg
        node.status.advertise_address = advertise
        node.status.etcd_member = True
        await store.update_node(node, existing.mod_revision)
    else:
        from kat_agent.leader.agent_api import register_node
        from kat_agent.leader.nodes import NodeRegistry

        registry = NodeRegistry(store, config.spec)
        node = _new_node(name, advertise, config.spec, opts, dd)
        node = await register_node(store, registry, config.spec, node, name)
    return await _finish_local_identity(dd, store, config, node, cluster_uid, advertise)


# ---------------------------------------------------------------- join


async def run_join(leader: str, token: str, opts: NodeOptions) -> None:
    dd = DataDir(opts.data_dir)
    dd.create()
    identity = NodeIdentity.load(dd.identity_file)
    if identity is None:
        identity = await _join(dd, leader, token, opts)
        if not identity.etcd_member and opts.reexec_after_join:
            # Start over as the resumed agent: the join's key generation and
            # certificate code (cryptography) then never stays resident.
            log.info("joined; restarting as node %s", identity.name)
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "kat_agent.cli", *sys.argv[1:]])
    else:
        log.info(
            "resuming node %s from %s (already joined; token not needed)", identity.name, dd.root
        )
    if not identity.etcd_member:
        await serve(dd, identity, None, opts)
        return
    from internal.security import sealing
    from kat_agent import bootstrap
    from kat_agent.member import MemberStartError, member_store

    config = load_local_config(dd)
    initial: dict[str, str] = {}
    if _initial_cluster_file(dd).exists():
        initial = json.loads(_initial_cluster_file(dd).read_text())
    try:
        async with member_store(
            dd,
            config.spec,
            identity.name,
            identity.advertise_address,
            opts.etcd_binary,
            initial_cluster=initial or None,
            state="existing",
        ) as store:
            await _seal_clear_material(dd, store)
            material = await store.get_ca_material()
            if material is not None and not dd.ca_key.exists():
                secret = None
                if dd.cluster_secret.exists():
                    secret = sealing.read_secret(dd.cluster_secret)
                try:
                    bootstrap.write_ca_material(dd, material, secret)
                except sealing.SecretError as exc:
                    raise StartupError(f"cannot install the cluster CA: {exc}") from None
            await serve(dd, identity, store, opts)
    except MemberStartError as exc:
        raise StartupError(str(exc)) from None


async def _seal_clear_material(dd: DataDir, store: Store) -> None:
    """A cluster made before the CA keys in etcd were sealed still has them in the clear:
    a single-member cluster (the quickstart's) is sealed in place at the start of its
    member, with a cluster secret made here (0600). With several members the others
    would lack the secret (a member joining later gets it from the leader), so there
    it is said how to seal instead: back up, then restore with a secret."""
    from kat_agent import bootstrap

    material = await store.get_ca_material()
    if material is None or material.sealed_ca_key or not dd.ca_key.exists():
        return
    if len(await store.etcd.member_list()) != 1:
        log.warning(
            "the CA keys in etcd are in the clear (made by an older KAT); seal them with "
            "`kat-agent backup` and `kat-agent init --restore-from ... --cluster-secret-file ...`"
        )
        return
    await store.replace_ca_material(bootstrap.ca_material(dd))
    log.info("sealed the CA keys in etcd with the cluster secret %s", dd.cluster_secret)


async def _join(dd: DataDir, leader: str, token: str, opts: NodeOptions) -> NodeIdentity:
    from internal.security import pki
    from kat_agent import bootstrap
    from kat_agent.node.network.keys import ensure_keypair

    advertise = opts.advertise_address or default_advertise_address()
    capacity, _ = machine_resources()
    req = kat_pb2.JoinRequest(
        advertise_address=advertise,
        hostname=opts.node_name or socket.gethostname(),
        labels=opts.labels,
        capacity=capacity,
        etcd_member=opts.etcd_member,
        wireguard_public_key=ensure_keypair(dd.wireguard_key),
    )
    etcd_keys = (b"", b"")
    if opts.etcd_member:
        etcd_keys = (pki.generate_private_key(), pki.generate_private_key())
        req.etcd_server_csr_pem = pki.create_csr(etcd_keys[0])
        req.etcd_client_csr_pem = pki.create_csr(etcd_keys[1])
    try:
        resp = await bootstrap.join_cluster(dd, leader, token, req)
    except bootstrap.JoinError as exc:
        raise StartupError(str(exc)) from None
    dd.left_marker.unlink(missing_ok=True)  # a member again: its network parts come back
    if opts.etcd_member:
        from internal.security import sealing

        if resp.cluster_secret:
            sealing.write_secret(dd.cluster_secret, resp.cluster_secret)
        p = dd.etcd_pki
        pki.write_certificate(p / "ca.crt", resp.etcd_ca_pem)
        pki.write_private_key(p / "server.key", etcd_keys[0])
        pki.write_certificate(p / "server.crt", resp.etcd_server_certificate_pem)
        pki.write_private_key(p / "client.key", etcd_keys[1])
        pki.write_certificate(p / "client.crt", resp.etcd_client_certificate_pem)
        write_atomic(
            _initial_cluster_file(dd), json.dumps(dict(resp.etcd_initial_cluster)).encode()
        )
    identity = NodeIdentity(
        name=resp.node.metadata.name,
        uid=resp.node.metadata.uid,
        cluster_uid=resp.cluster_uid,
        advertise_address=advertise,
        api_endpoints=list(resp.api_endpoints),
        subnet=resp.node.status.subnet,
        etcd_member=opts.etcd_member,
    )
    write_atomic(_config_copy(dd), resp.configuration.SerializeToString(), 0o600)
    identity.save(dd.identity_file)
    role = " (etcd member)" if opts.etcd_member else ""
    print(f"joined cluster {resp.cluster_uid} as node {identity.name}{role}", flush=True)
    return identity


# ---------------------------------------------------------------- serving


async def serve(
    dd: DataDir, identity: NodeIdentity, store: Store | None, opts: NodeOptions
) -> None:
    from internal.observability.logs import set_node
    from kat_agent.observe import serve_node_metrics

    set_node(identity.name)
    config = load_local_config(dd)
    agent = Agent(dd, identity, config.spec.agent_tick_seconds, opts.labels)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(serve_node_metrics(dd, identity, config.spec), name="metrics")
        if store is not None:
            # imported here: agents that run no etcd member never load etcd or PKI code
            from kat_agent.member import run_member

            tg.create_task(run_member(dd, identity, store, config), name="member")
        tg.create_task(agent.run(), name="agent")
        from kat_agent.renewal import run_node_certificate_renewal

        tg.create_task(run_node_certificate_renewal(dd, agent), name="node-certificate")
        tg.create_task(
            run_node(dd, identity, agent, config, rootless=opts.rootless), name="node-runtime"
        )


async def backup_now(opts: NodeOptions, output: Path | None) -> Path:
    """`kat-agent backup`: a snapshot of this member's etcd, taken locally."""
    from internal.state.etcd import EtcdClient

    dd = DataDir(opts.data_dir)
    identity = NodeIdentity.load(dd.identity_file)
    if identity is None or not identity.etcd_member:
        raise StartupError(f"{dd.root} holds no etcd member; run this on a member node")
    spec = load_local_config(dd).spec
    p = dd.etcd_pki
    client = EtcdClient(
        [f"127.0.0.1:{spec.etcd_client_port}"],
        ca_file=p / "ca.crt",
        cert_file=p / "client.crt",
        key_file=p / "client.key",
    )
    from kat_agent.leader.backups import snapshot_name

    path = output or Path(spec.backup_path) / snapshot_name(datetime.now(UTC))
    try:
        await client.snapshot(path)
    finally:
        await client.close()
    return path
