"""A new workload user's first container, started with `podman run -d` while the user's
Podman service comes up (PodmanPool.start_first).

Why: a new user's `podman system service` takes about as long to answer as a whole
`podman run` (it sets up the user namespace and Podman's state first; measured here
0.15-0.25 s), and only then could the API create and start the container. Run beside
the service, the command line does that setup itself, and the start of a new rootless
workload costs about one `podman run`. The container is the API's (spec.py `run_args`
renders the same create body); whatever the command line cannot say the same way, or a
failed run, falls back to the API path.
"""

from __future__ import annotations

import logging
import re

from kat_agent.node.podman.runtime import Runtime
from kat_agent.node.podman.service import PodmanService
from kat_agent.node.podman.spec import InstanceSpec, run_args

log = logging.getLogger(__name__)

# Podman's own warnings to leave out: said on every rootless run here, about the host.
_CLI_NOISE = ("is not a shared mount",)


def cli_warnings(stderr: str) -> list[str]:
    """The `msg` of each `level=warning` line the Podman command line wrote."""
    found = []
    for line in stderr.splitlines():
        m = re.search(r'level=warning msg="((?:[^"\\]|\\.)*)"', line)
        if m and not any(n in m.group(1) for n in _CLI_NOISE):
            found.append(m.group(1).replace('\\"', '"'))
    return found


async def run_first(svc: PodmanService, rt: Runtime, spec: InstanceSpec) -> str | None:
    """`podman run -d` of `spec` as the service's user; its container id, or None when
    the command line cannot say the same container or the run failed, with what it left
    removed (by name: only for a user whose storage was new, so nothing else has it)."""
    args = run_args(await rt.prepare(spec))
    if args is None:
        return None
    name = spec.container_name
    # --pull=never: the image comes from the shared store only, never pulled as the
    # user (that would copy it into the user's storage).
    try:
        status, out, err = await svc.run_cli("run", "-d", "--pull=never", *args)
    except OSError as exc:
        status, out, err = -1, "", str(exc)
    cid = out.strip().splitlines()[-1] if out.strip() else ""
    if status == 0 and cid:
        for warning in cli_warnings(err):  # as the API path logs create's warnings
            log.warning("create container %s: %s", name, warning)
        log.info("%s: started with podman run while its user's service came up", name)
        return cid
    log.info("%s: podman run failed (%s); creating it through the API", name, err.strip()[-300:])
    try:
        await svc.run_cli("rm", "-f", "--ignore", name)
    except OSError as exc:
        log.warning("%s: could not remove what the failed podman run left: %s", name, exc)
    return None
