"""Spare workload users: a rootless workload's first container on a node used to wait for
its user to be made (useradd and subordinate ids, ~35 ms) and for that user's Podman
service to answer (0.15-0.25 s): longer than creating and starting the container. So
each rootless node keeps `want` spares (default 1, `KAT_SPARE_WORKLOAD_USERS`): users
made ahead of time whose Podman service already runs, with the node's storage setup.
The first container of a new workload takes one: the user is renamed to its
`kat_wl_<namespace>_<name>` (accounts.py: uid, gid, home, storage, subordinate ids and
the running service stay), and a new spare is made in the background once the node
has had `settle_seconds` for the start that took it.

A spare is `<prefix>_spare<8 hex>` (no workload user's name has `_` right after the
prefix: namespaces start with a letter) with the comment `kat spare <agent tag>`, so
each agent on a machine (dev clusters) only takes and adopts its own. Its home keeps
its path when it is renamed (its Podman storage is in it and in use): a workload user
made from a spare has its home at /var/lib/kat-workloads/<spare name>.

Level-triggered: the pool's task makes spares until there are `want`, adopts the
spares an earlier run of the agent left (their service is started again) and removes
those beyond `want`. An agent that stops leaves its spares (their services stop with
it) for its next start; `kat-agent uninstall` removes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pwd
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from internal.host.environment import number_from_env
from kat_agent.node.podman.accounts import account_files_lock, rename_account
from kat_agent.node.podman.errors import PodmanServiceError
from kat_agent.node.podman.users import (
    DEFAULT_HOME_BASE,
    SPARE_GECOS_PREFIX,
    WorkloadUser,
    _ensure_subids,
    _gecos,
    add_user,
    delete_user,
    ensure_runtime_dir,
    username_prefix,
    users_lock,
    workload_username,
)

log = logging.getLogger(__name__)

SPARES_ENV = "KAT_SPARE_WORKLOAD_USERS"
DEFAULT_SPARES = 1
RETRY_SECONDS = 30.0


def spares_from_env(environ: Mapping[str, str] | None = None) -> int:
    """How many spare users a rootless node keeps: $KAT_SPARE_WORKLOAD_USERS (0 turns
    them off, at most 8), default 1."""
    return number_from_env(SPARES_ENV, DEFAULT_SPARES, 0, 8, int, environ)


def _spare_gecos(tag: str) -> str:
    return f"{SPARE_GECOS_PREFIX}{tag}"


def create_spare_user(tag: str, home_base: Path = DEFAULT_HOME_BASE) -> WorkloadUser:
    """A new spare user of the agent with tag `tag`. Blocking."""
    username = f"{username_prefix()}_spare{secrets.token_hex(4)}"
    with users_lock():
        pw = add_user(username, _spare_gecos(tag), home_base)
        _ensure_subids(username, pw.pw_uid)
    user = WorkloadUser(pw.pw_uid, pw.pw_gid, username)
    ensure_runtime_dir(user)
    log.info("created spare workload user %s (uid %d)", username, pw.pw_uid)
    return user


def spare_users(tag: str) -> list[WorkloadUser]:
    """The spare users of the agent with tag `tag` (this agent's prefix). Blocking."""
    start = f"{username_prefix()}_spare"
    return [
        WorkloadUser(pw.pw_uid, pw.pw_gid, pw.pw_name)
        for pw in pwd.getpwall()
        if pw.pw_name.startswith(start) and pw.pw_gecos == _spare_gecos(tag)
    ]


def claim_spare_user(spare: WorkloadUser, namespace: str, name: str) -> WorkloadUser | None:
    """Rename `spare` to the user of workload namespace/name; None if that user exists
    already (the caller takes it). PodmanServiceError if `spare` is no longer a spare
    (removed or changed behind KAT's back). Blocking."""
    username = workload_username(namespace, name)
    with users_lock():
        try:
            pwd.getpwnam(username)
            return None
        except KeyError:
            pass
        try:
            pw = pwd.getpwuid(spare.uid)
        except KeyError:
            pw = None
        if (
            pw is None
            or pw.pw_name != spare.username
            or not pw.pw_gecos.startswith(SPARE_GECOS_PREFIX)
        ):
            raise PodmanServiceError(f"{spare.username} is no longer a spare user")
        with account_files_lock():
            rename_account(spare.username, username, _gecos(namespace, name))
        if pwd.getpwuid(spare.uid).pw_name != username:
            raise PodmanServiceError(f"renaming spare user {spare.username} to {username} failed")
    log.info(
        "spare user %s (uid %d) is now workload user %s for %s/%s",
        spare.username,
        spare.uid,
        username,
        namespace,
        name,
    )
    return WorkloadUser(spare.uid, spare.gid, username)


def remove_spare_user(user: WorkloadUser, grace: float = 2.0) -> bool:
    """Delete spare `user` (its processes, home, subordinate ids); False if it is gone or
    no longer a spare. Blocking."""
    with users_lock():
        try:
            pw = pwd.getpwuid(user.uid)
        except KeyError:
            return False
        if pw.pw_name != user.username or not pw.pw_gecos.startswith(SPARE_GECOS_PREFIX):
            return False
        delete_user(pw, grace)
    log.info("removed spare workload user %s", user.username)
    return True


def remove_all_spare_users() -> list[str]:
    """Every spare of this machine's KAT agents with this prefix (uninstall). Blocking."""
    start = f"{username_prefix()}_spare"
    removed = []
    for pw in pwd.getpwall():
        if pw.pw_name.startswith(start) and pw.pw_gecos.startswith(SPARE_GECOS_PREFIX):
            user = WorkloadUser(pw.pw_uid, pw.pw_gid, pw.pw_name)
            try:
                if remove_spare_user(user):
                    removed.append(pw.pw_name)
            except (OSError, PodmanServiceError) as exc:
                log.warning("could not remove spare user %s: %s", pw.pw_name, exc)
    return removed


class SpareBackend(Protocol):
    """What the pool keeps of a spare: its user and its running Podman service."""

    key: str
    user: WorkloadUser | None

    def renamed(self, user: WorkloadUser) -> None: ...


B = TypeVar("B", bound=SpareBackend)


class SparePool(Generic[B]):
    """`want` spare users with a running Podman service each. `start_backend(user)`
    starts a user's service (PodmanPool's), `stop_backend` stops it."""

    def __init__(
        self,
        want: int,
        tag: str,
        home_base: Path,
        start_backend: Callable[[WorkloadUser], Awaitable[B]],
        stop_backend: Callable[[B], Awaitable[None]],
        alive: Callable[[B], Awaitable[bool]],
        settle_seconds: float = 2.0,
    ) -> None:
        self.want, self._tag, self._home_base = want, tag, home_base
        self._start_backend, self._stop_backend = start_backend, stop_backend
        self._alive = alive
        self._settle = settle_seconds
        self._ready: list[B] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._discarding: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kat-spare-users")

    async def claim(self, namespace: str, workload: str) -> B | None:
        """A ready spare, renamed to the user of namespace/workload; None without one
        (or when that user exists already)."""
        while self._ready:
            spare = self._ready.pop()
            self._wake.set()
            assert spare.user is not None
            if not await self._alive(spare):
                # Its service died (killed behind KAT's back, or restarting): a workload
                # must not wait for it, nor fail on it.
                log.warning("spare user %s: its Podman service does not answer", spare.key)
                self._discard_later(spare)
                continue
            try:
                user = await asyncio.to_thread(claim_spare_user, spare.user, namespace, workload)
            except (OSError, PodmanServiceError) as exc:
                log.warning("cannot take spare user %s: %s", spare.key, exc)
                self._discard_later(spare)
                continue
            if user is None:
                self._ready.append(spare)
                return None
            spare.renamed(user)
            return spare
        return None

    def _discard_later(self, spare: B) -> None:
        """Remove a broken spare off the claim's path (ending its processes takes up to
        a few seconds)."""
        task = asyncio.create_task(self._discard(spare), name=f"kat-discard-{spare.key}")
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    async def _discard(self, spare: B) -> None:
        with contextlib.suppress(Exception):
            await self._stop_backend(spare)
        if spare.user is not None:
            try:
                await asyncio.to_thread(remove_spare_user, spare.user)
            except (OSError, PodmanServiceError) as exc:
                log.warning("could not remove spare user %s: %s", spare.key, exc)

    async def _adopt(self) -> None:
        """The spares an earlier run left: started again up to `want`, the rest removed."""
        for user in await asyncio.to_thread(spare_users, self._tag):
            if len(self._ready) < self.want:
                try:
                    self._ready.append(await self._start_backend(user))
                    log.info("adopted spare workload user %s", user.username)
                    continue
                except Exception as exc:  # noqa: BLE001 - a broken spare is replaced
                    log.warning("cannot start the service of spare %s: %s", user.username, exc)
            with contextlib.suppress(OSError, PodmanServiceError):
                await asyncio.to_thread(remove_spare_user, user)

    async def _make_one(self) -> None:
        user = await asyncio.to_thread(create_spare_user, self._tag, self._home_base)
        try:
            backend = await self._start_backend(user)
        except BaseException:
            with contextlib.suppress(OSError, PodmanServiceError):
                await asyncio.to_thread(remove_spare_user, user)
            raise
        self._ready.append(backend)
        log.info("spare workload user %s ready", user.username)

    async def _run(self) -> None:
        try:
            await self._adopt()
        except Exception:
            log.exception("cannot adopt the spare workload users of an earlier run")
        first = True
        while True:
            while len(self._ready) < self.want:
                if not first:
                    # A spare was just taken: its workload's container starts now, and
                    # making a user and starting a Podman service would compete with it.
                    await asyncio.sleep(self._settle)
                try:
                    await self._make_one()
                except Exception as exc:  # noqa: BLE001 - retried; workloads go on without
                    log.warning("cannot make a spare workload user: %s", exc)
                    await asyncio.sleep(RETRY_SECONDS)
            first = False
            self._wake.clear()
            await self._wake.wait()

    async def close(self) -> None:
        """Stop the task and the spares' services; the users stay for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for spare in self._ready:
            with contextlib.suppress(Exception):
                await self._stop_backend(spare)
        self._ready.clear()
