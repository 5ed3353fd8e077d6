"""The Podman services of one node and which of them runs a workload.

Root mode: one root Podman service with the node's storage (`PodmanStorage.from_env`)
runs every container; new containers join the bridge network `kat` on the node's subnet
(gateway = the subnet's first address, the others handed out by Podman's IPAM).

Rootless mode (the default, SPEC section 8): each workload runs as its own user
`kat_wl_<namespace>_<name>` (`ensure_workload_user`) with a Podman service of its own,
started on first use. The root service still runs: it is the node's image cache. An image
a workload user lacks is pulled once into root's storage (or found there) and, with
fuse-overlayfs, loaded once into the node's shared read-only image store that every
workload user's Podman reads (`additionalimagestores`): a new workload copies nothing.
Without fuse-overlayfs it is copied to the user's storage (save/load), once per user.
Which driver and why: kat_agent/node/podman/imagestore.py. Rootless containers use
Podman's rootless default network (slirp4netns): they have no address of their own on the
node's subnet, and the IP reported is whatever Podman reports ("" for slirp4netns).

Where things live:
- root's socket: <data-dir>/agent/podman/podman.sock (or /run/kat/<hash of the data
  dir>/podman.sock when that path is too long for a unix socket), its log next to it;
- a workload user's socket: /run/user/<uid>/kat-<tag>.sock (tag: a hash of the directory
  of root's socket, so several agents on one machine do not meet);
- a workload user's storage: when the node has a storage of its own (KAT_PODMAN_ROOT,
  as in the dev cluster) <home>/kat-storage/<tag>/{root,tmp,networks} with runroot
  /run/user/<uid>/kat-<tag>; otherwise the user's default storage in its home. Not under
  the data dir: that is 0700 root, and the user could not reach it;
- a workload user's storage.conf: <home>/.config/containers/kat-<tag>-storage.conf;
- the shared image store: /var/lib/kat-images/<tag> (root-owned, read-only to users).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import pwd
import shutil
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.v1alpha1 import kat_pb2
from internal.host.datadir import DataDir, NodeIdentity
from kat_agent.node.idle_users import DEFAULT_IDLE_SERVICE_SECONDS, idle_seconds_from_env
from kat_agent.node.network.records import node_dns_address, search_path
from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind, PodmanServiceError
from kat_agent.node.podman.imagestore import (
    SHARED_STORE_BASE,
    VFS,
    RootlessDriver,
    SharedImageStore,
    detect_driver,
    shared_store_for,
    write_user_storage_conf,
)
from kat_agent.node.podman.mounts import DEFAULT_VOLUME_BASE
from kat_agent.node.podman.runtime import Runtime
from kat_agent.node.podman.service import MAX_SOCKET_PATH, PodmanService, PodmanStorage, ping
from kat_agent.node.podman.spares import SparePool, spares_from_env
from kat_agent.node.podman.users import (
    DEFAULT_HOME_BASE,
    GECOS_PREFIX,
    RUNTIME_DIR_BASE,
    WorkloadUser,
    ensure_workload_user,
    remove_workload_user,
    username_prefix,
    workload_username,
)

log = logging.getLogger(__name__)

NETWORK_NAME = "kat"
DEFAULT_CLUSTER_DOMAIN = "kat.cluster.local"
NETWORK_INTERFACE = "kat0"
RUN_BASE = Path("/run/kat")
FALSE_WORDS = ("0", "false", "no", "off")


def rootless_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """KAT_ROOTLESS=0 (or false/no/off) turns rootless workloads off; default on."""
    env = os.environ if environ is None else environ
    return env.get("KAT_ROOTLESS", "").strip().lower() not in FALSE_WORDS


@dataclass
class NodeSettings:
    """What the node runtime needs to know about its node."""

    node_name: str
    state_dir: Path  # <data-dir>/agent: the saved assignments
    run_dir: Path  # root's Podman socket and log
    subnet: str = ""  # the node's overlay subnet; "" = no `kat` network
    storage: PodmanStorage = field(default_factory=PodmanStorage)
    rootless: bool = True
    volume_base_path: Path = DEFAULT_VOLUME_BASE
    containers_conf: Path | None = None
    netns: Path | None = None  # run root's Podman in this network namespace (tests)
    home_base: Path = DEFAULT_HOME_BASE  # homes of the workload users
    grace_seconds: float = 10.0  # SIGTERM to SIGKILL when stopping a container
    resync_seconds: float = 10.0  # full comparison with what Podman reports
    # a workload user's service outlives its last instance this long
    idle_service_seconds: float = DEFAULT_IDLE_SERVICE_SECONDS
    network: str = NETWORK_NAME
    network_interface: str = NETWORK_INTERFACE
    data_root: Path | None = None  # the data dir (made traversable for rootless volumes)
    host_mount_allowed: tuple[str, ...] = ()  # cluster.kat's hostMountAllowedPaths
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    image_store_base: Path = SHARED_STORE_BASE  # the shared image stores (per tag)
    rootless_driver: RootlessDriver | None = None  # None: detected (imagestore.py)
    spare_users: int = 0  # users made ahead of their workload (spares.py; for_node: 1)

    def container_dns(self, namespace: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(nameservers, search domains) for a container of `namespace`: the node's DNS
        at the first host address of its subnet; none without a subnet."""
        if not self.subnet:
            return (), ()
        return (node_dns_address(self.subnet),), tuple(search_path(namespace, self.cluster_domain))

    container_log_max_bytes: int = 0  # containerLogMaxSize; 0: no cap

    @property
    def tag(self) -> str:
        return hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:10]

    def runtime_options(self) -> dict[str, Any]:
        """What every Runtime of this node is made with (volumes, hostMount policy)."""
        opts: dict[str, Any] = {
            "volume_base_path": self.volume_base_path,
            "host_mount_allowed": self.host_mount_allowed,
            "log_max_bytes": self.container_log_max_bytes,
        }
        if self.data_root is not None:
            opts["data_dir"] = str(self.data_root)
        return opts

    @staticmethod
    def run_dir_for(data_root: Path) -> Path:
        """Root's Podman socket directory of the node with this data dir."""
        run_dir = data_root.absolute() / "agent" / "podman"
        if len(str(run_dir / "podman.sock")) > MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(data_root.absolute()).encode()).hexdigest()[:12]
            run_dir = RUN_BASE / digest
        return run_dir

    @classmethod
    def for_node(
        cls,
        dd: DataDir,
        identity: NodeIdentity,
        config: kat_pb2.ClusterConfiguration,
        rootless: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> NodeSettings:
        env = os.environ if environ is None else environ
        run_dir = cls.run_dir_for(dd.root)
        conf = env.get("CONTAINERS_CONF")
        return cls(
            node_name=identity.name,
            state_dir=dd.root / "agent",
            run_dir=run_dir,
            subnet=identity.subnet,
            storage=PodmanStorage.from_env(env),
            rootless=rootless_from_env(env) if rootless is None else rootless,
            spare_users=spares_from_env(env),
            idle_service_seconds=idle_seconds_from_env(env),
            volume_base_path=Path(config.spec.volume_base_path or DEFAULT_VOLUME_BASE),
            containers_conf=Path(conf) if conf else None,
            data_root=dd.root,
            host_mount_allowed=tuple(config.spec.host_mount_allowed_paths),
            cluster_domain=config.spec.cluster_domain or DEFAULT_CLUSTER_DOMAIN,
            container_log_max_bytes=_log_max_bytes(config.spec.container_log_max_size),
        )


@dataclass
class Backend:
    """One Podman service and the Runtime on its socket."""

    key: str  # "root" or the workload user's name
    runtime: Runtime
    service: PodmanService
    user: WorkloadUser | None = None
    network: str | None = None  # the network new containers join
    driver: RootlessDriver | None = None  # a workload user's storage driver

    @property
    def rootless(self) -> bool:
        return self.user is not None

    def renamed(self, user: WorkloadUser) -> None:
        """A spare user's backend now belongs to workload user `user` (spares.py)."""
        self.key, self.user, self.service.user = user.username, user, user


USER_REMOVAL_SECONDS = 60


def _log_max_bytes(text: str) -> int:
    """containerLogMaxSize in bytes; a configuration stored before the field: the default."""
    from internal.manifests import defaults
    from internal.manifests.quantity import parse_memory

    try:
        return parse_memory(text or str(defaults.CLUSTER_DEFAULTS["container_log_max_size"]))
    except ValueError:
        return 0


def _run_into(fut: asyncio.Future[None], fn: Callable[..., None], *args: object) -> None:
    """Run fn(*args) in this thread and settle fut on its loop."""
    loop = fut.get_loop()
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
        loop.call_soon_threadsafe(lambda e=exc: fut.done() or fut.set_exception(e))
        return
    loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))


def _gateway(subnet: str) -> tuple[str, str]:
    return str(ipaddress.ip_network(subnet, strict=False)), node_dns_address(subnet)


def _own_storage_parents(storage: PodmanStorage, user: WorkloadUser) -> None:
    """The directories between the user's home and its storage belong to the user."""
    home = user.home
    for _, path in storage.items():
        for d in reversed(path.parents):
            if home in d.parents:
                d.mkdir(mode=0o700, exist_ok=True)
                os.chown(d, user.uid, user.gid)


class PodmanPool:
    """Root's Podman service and, in rootless mode, one per workload user."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self._root: Backend | None = None
        self._users: dict[str, Backend] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Set once root's `kat` network has been set up (or found impossible): the
        # overlay waits for it (kat_agent/node/main.py).
        self.network_ready = asyncio.Event()
        self.driver: RootlessDriver | None = None  # workload users' (rootless mode)
        self.image_store: SharedImageStore | None = None
        self.spares: SparePool[Backend] = SparePool(
            settings.spare_users if settings.rootless else 0,
            settings.tag,
            settings.home_base,
            self._start_user_backend,
            self._stop_backend,
            lambda b: ping(b.service.socket_path),
        )

    @property
    def root(self) -> Backend:
        if self._root is None:
            raise RuntimeError("the Podman pool is not started")
        return self._root

    def backends(self) -> list[Backend]:
        return [b for b in (self._root, *self._users.values()) if b is not None]

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # ------------------------------------------------------------ root

    async def start(self) -> None:
        """Start root's service, set up the `kat` network, find the workload users that
        already have containers on this node (adoption)."""
        s = self.settings
        await asyncio.to_thread(self._prepare_dirs)
        if s.rootless:
            await self._choose_rootless_storage()
        svc = PodmanService(
            s.run_dir / "podman.sock",
            storage=s.storage,
            containers_conf=s.containers_conf,
            netns=s.netns,
        )
        await svc.start()
        try:
            await svc.wait_ready(60)
            rt = Runtime(svc.socket_path, **s.runtime_options())
            network = None
            if s.subnet:
                subnet, gateway = _gateway(s.subnet)
                try:
                    await rt.ensure_network(s.network, subnet, gateway, s.network_interface)
                    network = s.network
                except ContainerRuntimeError as exc:
                    if exc.kind is ErrorKind.UNAVAILABLE:
                        raise
                    log.error(
                        "cannot set up network %s on %s (%s): containers get Podman's "
                        "default network instead",
                        s.network,
                        subnet,
                        exc,
                    )
        except BaseException:
            await svc.stop()
            raise
        self.network_ready.set()
        self._root = Backend("root", rt, svc, None, network)
        for user in await asyncio.to_thread(self._users_with_storage):
            try:
                await self._user_backend(user)
            except Exception as exc:  # noqa: BLE001 - one broken user must not stop the node
                log.error("cannot start the Podman service of %s: %s", user.username, exc)
        self.spares.start()

    async def _choose_rootless_storage(self) -> None:
        s = self.settings
        self.driver = s.rootless_driver or await asyncio.to_thread(detect_driver)
        self.image_store = await asyncio.to_thread(
            shared_store_for, self.driver, s.tag, s.image_store_base
        )

    def _prepare_dirs(self) -> None:
        s = self.settings
        s.run_dir.mkdir(parents=True, exist_ok=True)
        s.run_dir.chmod(0o700)
        (s.state_dir / "tmp").mkdir(parents=True, exist_ok=True)
        if s.rootless:
            self._make_volume_base_reachable()

    def _make_volume_base_reachable(self) -> None:
        """Workload users must traverse the directories above their volumes. The data
        dir is 0700; volumes under it (the default /var/lib/kat/volumes) get o+x on it
        (traverse only: nothing in it becomes listable or readable)."""
        root = self.settings.data_root
        base = self.settings.volume_base_path
        if root is None:
            return
        base.mkdir(parents=True, exist_ok=True)
        root = root.absolute()
        for d in (base.absolute(), *base.absolute().parents):
            if d != root and root not in d.parents:
                continue
            mode = d.stat().st_mode
            if not mode & stat.S_IXOTH:
                d.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
                log.info("made %s traversable (o+x) for rootless workload volumes", d)

    # ------------------------------------------------------------ workload users

    def user_storage(self, user: WorkloadUser) -> PodmanStorage:
        s = self.settings
        if s.storage.root is None:
            return PodmanStorage()  # the user's default storage in its home
        base = user.home / "kat-storage" / s.tag
        return PodmanStorage(
            root=base / "root",
            runroot=RUNTIME_DIR_BASE / str(user.uid) / f"kat-{s.tag}",
            tmpdir=base / "tmp",
            network_config_dir=base / "networks",
        )

    def storage_conf_path(self, user: WorkloadUser) -> Path:
        return user.home / ".config" / "containers" / f"kat-{self.settings.tag}-storage.conf"

    def _write_user_storage_conf(
        self, user: WorkloadUser, storage: PodmanStorage
    ) -> tuple[RootlessDriver, Path]:
        path = self.storage_conf_path(user)
        driver = write_user_storage_conf(path, user, storage, self.driver or VFS, self.image_store)
        return driver, path

    def _has_storage(self, user: WorkloadUser) -> bool:
        storage = self.user_storage(user)
        if storage.root is not None:
            return storage.root.is_dir()
        return (user.home / ".local" / "share" / "containers" / "storage").is_dir()

    def _users_with_storage(self) -> list[WorkloadUser]:
        found = []
        prefix = username_prefix()
        for pw in pwd.getpwall():
            if pw.pw_name.startswith(prefix) and pw.pw_gecos.startswith(GECOS_PREFIX):
                user = WorkloadUser(pw.pw_uid, pw.pw_gid, pw.pw_name)
                with contextlib.suppress(OSError, KeyError):
                    if self._has_storage(user):
                        found.append(user)
        return found

    async def backend_for(self, namespace: str, workload: str) -> Backend:
        """Where a new container of this workload runs: its user's service, started on
        first use, or a spare user's (renamed to it) when one is ready."""
        if not self.settings.rootless:
            return self.root
        username = workload_username(namespace, workload)
        async with self._lock(username):
            have = self._users.get(username)
            if have is not None:
                return have
            spare = await self.spares.claim(namespace, workload)
            if spare is not None:
                self._users[username] = spare
                return spare
        user = await asyncio.to_thread(
            ensure_workload_user, namespace, workload, home_base=self.settings.home_base
        )
        return await self._user_backend(user)

    async def _user_backend(self, user: WorkloadUser) -> Backend:
        async with self._lock(user.username):
            have = self._users.get(user.username)
            if have is not None:
                return have
            backend = await self._start_user_backend(user)
            self._users[user.username] = backend
            return backend

    async def _start_user_backend(self, user: WorkloadUser) -> Backend:
        """Start `user`'s Podman service with this node's storage setup."""
        s = self.settings
        sock = RUNTIME_DIR_BASE / str(user.uid) / f"kat-{s.tag}.sock"
        storage = self.user_storage(user)
        await asyncio.to_thread(_own_storage_parents, storage, user)
        driver, conf = await asyncio.to_thread(self._write_user_storage_conf, user, storage)
        svc = PodmanService(
            sock,
            # Graph root and runroot come from the storage.conf: with --root or
            # --runroot flags Podman drops the conf's driver options (the shared
            # store, fuse-overlayfs) without a word.
            storage=PodmanStorage(
                tmpdir=storage.tmpdir, network_config_dir=storage.network_config_dir
            ),
            user=user,
            containers_conf=s.containers_conf,
            storage_conf=conf,
            log_file=s.run_dir / f"podman-{user.username}.log",
        )
        await svc.start()
        try:
            await svc.wait_ready(60)
        except BaseException:
            await svc.stop()
            raise
        rt = Runtime(svc.socket_path, owner=(user.uid, user.gid), **s.runtime_options())
        log.info("Podman service of workload user %s ready", user.username)
        return Backend(user.username, rt, svc, user, None, driver)

    async def _stop_backend(self, backend: Backend) -> None:
        """Stop a workload user's (or spare's) service and close its client."""
        await backend.service.stop()
        await backend.runtime.close()

    async def release(self, backend: Backend) -> None:
        """Stop a workload user's service (it has no container on this node any more)."""
        if backend.user is None:
            return
        async with self._lock(backend.key):
            if self._users.get(backend.key) is not backend:
                return
            # Stopped before it is forgotten: if this is cancelled, close() stops it.
            await self._stop_backend(backend)
            del self._users[backend.key]
            log.info("stopped the Podman service of %s (no containers left)", backend.key)

    async def retire(
        self, backend: Backend, namespace: str, workload: str, in_use: Callable[[], bool]
    ) -> None:
        """The workload's last container on this node is gone: stop its user's service
        and delete the user, its home (image copies included) and its subordinate id
        range, which later users reuse. Other agents on the same machine (dev clusters)
        keep their own storage under the same user's home: then only this agent's part
        goes, and the user stays for them."""
        await self.release(backend)
        user = backend.user
        if user is None:
            return
        async with self._lock(user.username):
            if in_use() or user.username in self._users:
                log.info("kept workload user %s: in use again", user.username)
                return  # an instance came back meanwhile
            # Its own thread: the default executor can be full of Podman calls waiting on
            # a socket that just went away, and removal must not queue behind them.
            log.info("removing workload user %s: its last container here is gone", user.username)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            threading.Thread(
                target=_run_into,
                args=(done, self._remove_user, user, namespace, workload),
                name="kat-remove-user",
                daemon=True,
            ).start()
            try:
                # Bounded: a re-apply of the workload waits for this lock.
                async with asyncio.timeout(USER_REMOVAL_SECONDS):
                    await done
            except TimeoutError:
                log.warning(
                    "removing workload user %s takes over %ss; going on without waiting",
                    user.username,
                    USER_REMOVAL_SECONDS,
                )
            except (PodmanServiceError, OSError) as exc:
                log.warning("could not remove workload user %s: %s", user.username, exc)
            except Exception:
                log.exception("could not remove workload user %s", user.username)

    def _remove_user(self, user: WorkloadUser, namespace: str, workload: str) -> None:
        tag = self.settings.tag

        def others_use_it(home: Path) -> bool:
            """Other agents on this machine (dev clusters) keep their own storage under
            the same user's home: then only this agent's part goes, and the user (with
            their processes, FUSE mounts of their storage among them) stays for them.
            Decided under the users lock, so the last of them removes the user."""
            if self.settings.storage.root is None:
                return False
            shared = home / "kat-storage"
            if shared.is_dir() and any(p.name != tag for p in shared.iterdir()):
                shutil.rmtree(shared / tag, ignore_errors=True)
                self.storage_conf_path(user).unlink(missing_ok=True)
                log.info("kept workload user %s: other agents here use it", user.username)
                return True
            return False

        # Ends the user's processes first (fuse-overlayfs, the pause process), then
        # deletes the home: deleting under a live FUSE mount could hang.
        remove_workload_user(namespace, workload, keep_if=others_use_it)

    # ------------------------------------------------------------ images

    async def ensure_image(self, backend: Backend, ref: str) -> None:
        """Make image `ref` available to `backend`: from local storage, else pulled into
        root's storage and, for a workload user, put into the shared image store (once
        per node) or, without one, copied to the user's storage."""
        if backend.user is None:
            await backend.runtime.ensure_image(ref)
            return
        if await backend.runtime.image_exists(ref):
            return
        async with self._lock(f"image {backend.key} {ref}"):
            if await backend.runtime.image_exists(ref):
                return
            await self.root.runtime.ensure_image(ref)
            if await self._into_shared_store(backend, ref):
                return
            name = hashlib.sha256(f"{backend.key} {ref}".encode()).hexdigest()[:16]
            tmp = self.settings.state_dir / "tmp" / f"image-{name}.tar"
            try:
                await self.root.runtime.save_image(ref, tmp)
                await backend.runtime.load_image(tmp, ref)
            finally:
                tmp.unlink(missing_ok=True)
            log.info("copied image %s to the storage of %s", ref, backend.key)

    async def _into_shared_store(self, backend: Backend, ref: str) -> bool:
        """True once `backend` sees `ref` through the shared image store."""
        store = self.image_store
        if store is None or backend.driver is None or not backend.driver.shared:
            return False
        async with self._lock(f"shared image {ref}"):
            if not await asyncio.to_thread(store.has, ref):
                name = hashlib.sha256(f"shared {ref}".encode()).hexdigest()[:16]
                tmp = self.settings.state_dir / "tmp" / f"image-{name}.tar"
                try:
                    await self.root.runtime.save_image(ref, tmp)
                    await asyncio.to_thread(store.load, tmp, ref)
                finally:
                    tmp.unlink(missing_ok=True)
        if await backend.runtime.image_exists(ref):
            return True
        log.warning("%s does not see %s in the shared image store; copying it", backend.key, ref)
        return False

    # ------------------------------------------------------------ end

    async def close(self) -> None:
        """Stop every service; the containers keep running (conmon holds them)."""
        await self.spares.close()
        for backend in list(self._users.values()):
            await backend.runtime.close()
            await backend.service.stop()
        self._users.clear()
        if self._root is not None:
            await self._root.runtime.close()
            await self._root.service.stop()
            self._root = None
