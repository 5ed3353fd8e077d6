"""The two things the node watches on a running container, as coroutines over the
container runtime: its exit, and its exec health checks (readiness, and failureThreshold
failures in a row). The reconciler (kat_agent/node/instances.py) runs one of each per
running container and turns what they find into facts for node_plan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from api.v1alpha1 import kat_pb2
from internal.core.node_plan import health_check
from kat_agent.node.instance_state import InstanceState
from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind
from kat_agent.node.podman.observe import ObservedContainer
from kat_agent.node.podman.runtime import ContainerRuntime

log = logging.getLogger(__name__)

HEALTH_DEFAULTS = {"period": 10, "timeout": 1, "success": 1, "failure": 3}
RETRY_BACKOFF = (0.5, 10.0)


async def wait_for_exit(runtime: ContainerRuntime, cid: str) -> ObservedContainer | None:
    """The container once it has stopped; None if it is gone (removed). Rides through
    Podman restarting (waits again, with back-off)."""
    delay = RETRY_BACKOFF[0]
    while True:
        try:
            await runtime.wait(cid)
            obs = await runtime.observe(cid)
        except ContainerRuntimeError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return None
            await asyncio.sleep(delay)  # Podman restarting: wait again
            delay = min(RETRY_BACKOFF[1], delay * 2)
            continue
        if not obs.running:
            return obs
        await asyncio.sleep(delay)  # Podman answered early: do not spin


async def run_health_checks(
    runtime: ContainerRuntime,
    obs: ObservedContainer,
    check: kat_pb2.HealthCheck,
    *,
    what: str,
    on_ready: Callable[[], None],
    on_failed: Callable[[], None],
) -> None:
    """Exec `check` in the container every period (after initialDelaySeconds from its
    start): `on_ready` after successThreshold passes in a row (once), `on_failed` after
    failureThreshold failures in a row (then it returns). Returns when the container
    stops. An unavailable Podman counts as neither."""
    period = check.period_seconds or HEALTH_DEFAULTS["period"]
    timeout = check.timeout_seconds or HEALTH_DEFAULTS["timeout"]
    need_ok = check.success_threshold or HEALTH_DEFAULTS["success"]
    need_bad = check.failure_threshold or HEALTH_DEFAULTS["failure"]
    command = list(check.exec.command)
    started = obs.started_at.timestamp() if obs.started_at else time.time()
    first = check.initial_delay_seconds - (time.time() - started)
    if first > 0:
        await asyncio.sleep(first)
    cid = obs.container_id
    good = bad = 0
    ready = False
    while True:
        began = time.monotonic()
        ok: bool | None
        try:
            code, output = await runtime.exec(cid, command, timeout)
            ok = code == 0
            detail = f"exit code {code}: {output[:200]!r}"
        except ContainerRuntimeError as exc:
            if exc.kind in (ErrorKind.NOT_RUNNING, ErrorKind.NOT_FOUND):
                return  # it stopped: the exit watcher reports that
            ok = None if exc.kind is ErrorKind.UNAVAILABLE else False
            detail = str(exc)
        if ok:
            good, bad = good + 1, 0
            if not ready and good >= need_ok:
                ready = True
                on_ready()
        elif ok is False:
            good, bad = 0, bad + 1
            log.info("%s: health check failed (%d/%d): %s", what, bad, need_bad, detail)
            if bad >= need_bad:
                on_failed()
                return
        await asyncio.sleep(max(0.0, period - (time.monotonic() - began)))


def watch_health(st: InstanceState, changed: Callable[[], None]) -> None:
    """Run the health checks of `st`'s container (once per container): readiness and a
    failure are recorded on `st`, and `changed` is called (the report changed)."""
    obs, backend, check = st.observed, st.backend, health_check(st.assignment)
    if obs is None or backend is None or check is None:
        return
    if st.health is not None and st.health[0] == obs.container_id and not st.health[1].done():
        return
    cid = obs.container_id

    def ready() -> None:
        if not st.ready:
            st.ready = True
            log.info("instance %s is ready", st.id)
            changed()

    def failed() -> None:
        if st.observed is not None and st.observed.container_id == cid:
            st.health_failed, st.ready = cid, False
            st.wake.set()
            changed()

    checks = run_health_checks(
        backend.runtime, obs, check, what=f"instance {st.id}", on_ready=ready, on_failed=failed
    )
    st.health = (cid, asyncio.get_running_loop().create_task(checks, name=f"health-{st.id}"))
