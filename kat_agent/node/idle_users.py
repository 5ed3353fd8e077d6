"""Retiring workload users (issue 13 part 5): once no instance of a workload is on this
node for `idle_service_seconds`, its user's Podman service stops and the user, its home
and its subordinate id range go (PodmanPool.retire).

Level-triggered: besides the instance that just went (`idle`), every resync pass
sweeps the pool (`sweep`), so that a user whose last instance went while the agent was
down, or whose retirement failed, is retired too; a user is retired once at a time."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

from internal.host.environment import number_from_env
from kat_agent.node.podman.runtime import BackendPool, RuntimeBackend
from kat_agent.node.podman.users import workload_of

IDLE_ENV = "KAT_IDLE_SERVICE_SECONDS"
DEFAULT_IDLE_SERVICE_SECONDS = 60.0


def idle_seconds_from_env(environ: Mapping[str, str] | None = None) -> float:
    """How long a workload user's Podman service (and the user) outlives its last
    instance: $KAT_IDLE_SERVICE_SECONDS (1 to 3600; tests shorten it), default 60."""
    return number_from_env(IDLE_ENV, DEFAULT_IDLE_SERVICE_SECONDS, 1.0, 3600.0, float, environ)


class _Placed(Protocol):
    namespace: str
    workload: str
    backend: RuntimeBackend | None


class IdleUsers:
    def __init__(
        self,
        pool: BackendPool,
        idle_seconds: Callable[[], float],
        placed: Callable[[], Iterable[_Placed]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._pool, self._idle_seconds, self._placed, self._spawn = (
            pool,
            idle_seconds,
            placed,
            spawn,
        )
        self._pending: set[str] = set()

    def in_use(self, backend: RuntimeBackend, namespace: str, workload: str) -> bool:
        return any(
            o.backend is backend or (o.namespace, o.workload) == (namespace, workload)
            for o in self._placed()
        )

    def idle(self, backend: RuntimeBackend) -> None:
        """An instance left `backend`: retire its workload user when idle."""
        if backend.user is None or backend.key in self._pending:
            return
        # Whose user it is comes from the user itself (its GECOS): the state of an
        # instance that went may no longer know its namespace and workload (an
        # instance known only by id has them empty), and removing "<prefix>_" finds
        # nothing, silently: that made the removal unreliable.
        owner = workload_of(backend.key)
        if owner is None:
            return
        namespace, workload = owner
        if self.in_use(backend, namespace, workload):
            return
        self._pending.add(backend.key)
        self._spawn(self._retire_when_idle(backend, namespace, workload))

    def sweep(self) -> None:
        """Every workload user's service without an instance here goes idle."""
        for backend in self._pool.backends():
            if backend.user is None:
                continue
            self.idle(backend)

    async def _retire_when_idle(
        self, backend: RuntimeBackend, namespace: str, workload: str
    ) -> None:
        try:
            await asyncio.sleep(self._idle_seconds())
            if not self.in_use(backend, namespace, workload):
                in_use = functools.partial(self.in_use, backend, namespace, workload)
                await self._pool.retire(backend, namespace, workload, in_use)
        finally:
            self._pending.discard(backend.key)
