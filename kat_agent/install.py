"""`kat-agent install init|join ...` and `kat-agent uninstall [--purge]`.

install writes a systemd unit that runs the given command line (paths made
absolute), restarts it on failure and stops only the agent process
(KillMode=process: containers keep running, exactly as when the agent is stopped
by hand; etcd and the Podman services are the agent's children and it stops them
itself), then enables and starts it where systemd is PID 1. Elsewhere (containers,
CI) it only writes the unit and says so.

uninstall stops and removes the unit, stops and removes KAT's containers in
root's Podman, removes the workload users KAT made (with their processes and
containers, homes, image copies and subordinate id ranges), KAT's network
interfaces (WireGuard overlay, `kat0` bridge, instance veths) and its nftables
table (kat_agent/host_cleanup.py) and, with --purge, the data directory. It works
on the network namespace it runs in. The agent must not be running (a unit is
stopped first; an agent started by hand must be stopped by hand).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kat_agent.node.podman.imagestore import SharedImageStore

UNIT_NAME = "kat-agent.service"
UNIT_DIR = Path("/etc/systemd/system")
# Options whose value is a path: made absolute, since systemd starts in /.
PATH_OPTIONS = ("--config", "--data-dir", "--restore-from", "--log-file", "--etcd-binary")


class InstallError(Exception):
    pass


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def absolute_args(args: list[str]) -> list[str]:
    out: list[str] = []
    it = iter(args)
    for a in it:
        key, eq, value = a.partition("=")
        if key in PATH_OPTIONS and eq:
            out.append(f"{key}={Path(value).absolute()}")
        elif a in PATH_OPTIONS:
            out += [a, str(Path(next(it, "")).absolute())]
        else:
            out.append(a)
    return out


def render_unit(
    args: list[str], python: str = sys.executable, env: dict[str, str] | None = None
) -> str:
    """The unit for `kat-agent ARGS` (ARGS start with init or join)."""
    if not args or args[0] not in ("init", "join"):
        raise InstallError("install needs the command to run: kat-agent install init|join ...")
    exec_start = shlex.join([python, "-m", "kat_agent.cli", *absolute_args(args)])
    lines = [
        "[Unit]",
        "Description=KAT node agent (kat-agent)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        "RestartSec=2s",
        # Only the agent gets SIGTERM; it stops etcd and the Podman services itself, and
        # containers (under conmon) keep running and are adopted when it starts again.
        "KillMode=process",
        "TimeoutStopSec=30s",
        "LimitNOFILE=65536",
    ]
    for key, value in sorted((env or {}).items()):
        lines.append(f"Environment={shlex.quote(f'{key}={value}')}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _systemctl(*args: str) -> None:
    res = subprocess.run(["systemctl", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise InstallError(f"systemctl {' '.join(args)} failed: {res.stderr.strip()}")


def install(args: list[str], unit_dir: Path = UNIT_DIR) -> str:
    """Write (and where systemd runs: enable and start) the unit; returns what was done."""
    env = {k: os.environ[k] for k in ("PYTHONPATH", "KAT_ROOTLESS") if os.environ.get(k)}
    unit = render_unit(args, env=env)
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / UNIT_NAME
    # A join token is a secret: then only root may read the unit (SPEC 10).
    secret = any(a == "--token" or a.startswith("--token=") for a in args)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(unit)
    path.chmod(0o600 if secret else 0o644)
    if unit_dir == UNIT_DIR and systemd_running():
        _systemctl("daemon-reload")
        _systemctl("enable", "--now", UNIT_NAME)
        return f"wrote {path}; enabled and started {UNIT_NAME}"
    return f"wrote {path}; systemd is not running here: start the agent by hand"


def _kat_users() -> list[tuple[str, str]]:
    """(namespace, workload) of every workload user KAT made on this machine."""
    from kat_agent.node.podman.users import GECOS_PREFIX, username_prefix

    prefix = username_prefix()  # kat_wl_, or what this agent was told (tests)
    found = []
    for pw in pwd.getpwall():
        if pw.pw_name.startswith(prefix) and pw.pw_gecos.startswith(GECOS_PREFIX):
            ns, _, name = pw.pw_gecos.removeprefix(GECOS_PREFIX).strip().partition("/")
            if ns and name:
                found.append((ns, name))
    return found


def _image_store(data_dir: Path) -> SharedImageStore:
    """The rootless workloads' shared image store of the node with this data dir."""
    from kat_agent.node.podman.imagestore import SharedImageStore
    from kat_agent.node.podman.services import NodeSettings

    run_dir = NodeSettings.run_dir_for(data_dir)
    tag = NodeSettings(node_name="", state_dir=data_dir, run_dir=run_dir).tag
    return SharedImageStore.for_tag(tag, "fuse-overlayfs")


def uninstall(
    data_dir: Path,
    purge: bool,
    unit_dir: Path = UNIT_DIR,
    users: list[tuple[str, str]] | None = None,
    host: bool = True,
) -> list[str]:
    """Everything KAT put on this node goes; `host=False` (tests) leaves containers,
    interfaces and firewall alone."""
    from kat_agent import host_cleanup
    from kat_agent.node.podman.users import remove_workload_user

    done = []
    path = unit_dir / UNIT_NAME
    if path.exists():
        if unit_dir == UNIT_DIR and systemd_running():
            _systemctl("disable", "--now", UNIT_NAME)
        path.unlink()
        if unit_dir == UNIT_DIR and systemd_running():
            _systemctl("daemon-reload")
        done.append(f"removed {path}")
    if host:
        done += host_cleanup.stop_containers()
    for ns, name in _kat_users() if users is None else users:
        if remove_workload_user(ns, name):
            done.append(f"removed workload user of {ns}/{name}")
    if users is None:
        from kat_agent.node.podman.spares import remove_all_spare_users

        done += [f"removed spare workload user {name}" for name in remove_all_spare_users()]
    store = _image_store(data_dir)
    if store.path.exists():
        store.remove()
        done.append(f"removed the shared image store {store.path}")
    if host:
        done += host_cleanup.remove_interfaces()
        done += host_cleanup.remove_firewall()
    if purge and data_dir.exists():
        shutil.rmtree(data_dir)
        done.append(f"removed {data_dir}")
    return done
