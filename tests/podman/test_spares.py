"""Spare workload users on the real account files (kat_agent/node/podman/spares.py): a spare
with a running process (as its Podman service would be) is renamed to a workload's user,
which `usermod --login` refuses; the user's files, ids and process are unchanged, and
every account tool still reads the files; uninstall's sweep removes spares."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kat_agent.node.podman import spares
from kat_agent.node.podman.errors import PodmanServiceError
from kat_agent.node.podman.users import remove_workload_user, workload_username

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd"
)


@pytest.fixture
def home_base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kat-spares-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_busy_spare_is_renamed_to_its_workloads_user(home_base: Path) -> None:
    tag, name = secrets.token_hex(5), f"sp{secrets.token_hex(3)}"
    spare = spares.create_spare_user(tag, home_base)
    proc = None
    try:
        assert spares.spare_users(tag) == [spare]
        home = Path(pwd.getpwnam(spare.username).pw_dir)
        proc = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={spare.uid}",
                f"--regid={spare.gid}",
                "--clear-groups",
                "sleep",
                "60",
            ]
        )
        # what usermod would say: the reason accounts.py exists
        wanted = workload_username("default", name)
        refused = subprocess.run(
            ["usermod", "--login", wanted, spare.username], capture_output=True, text=True
        )
        assert refused.returncode != 0 and "used by process" in refused.stderr

        user = spares.claim_spare_user(spare, "default", name)
        assert user is not None and user.username == wanted
        pw = pwd.getpwnam(wanted)
        assert (pw.pw_uid, pw.pw_gid, Path(pw.pw_dir)) == (spare.uid, spare.gid, home)
        assert pw.pw_gecos == f"kat workload default/{name}"
        assert proc.poll() is None  # its process never noticed
        assert spares.spare_users(tag) == []
        for tool in (["pwck", "-r"], ["grpck", "-r"]):
            out = subprocess.run(tool, capture_output=True, text=True)
            assert wanted not in out.stdout + out.stderr, out.stdout + out.stderr
            assert spare.username not in out.stdout + out.stderr
        assert subprocess.run(["id", wanted], capture_output=True).returncode == 0
        owners = {ln.split(":")[0] for ln in Path("/etc/subgid").read_text().splitlines()}
        assert wanted in owners and spare.username not in owners

        # the workload's user exists now: no second spare is renamed to it
        other = spares.create_spare_user(tag, home_base)
        try:
            assert spares.claim_spare_user(other, "default", name) is None
        finally:
            spares.remove_spare_user(other)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        remove_workload_user("default", name)
        spares.remove_spare_user(spare)
    with pytest.raises(KeyError):
        pwd.getpwuid(spare.uid)


def test_a_spare_gone_behind_kats_back_is_not_claimed(home_base: Path) -> None:
    tag = secrets.token_hex(5)
    spare = spares.create_spare_user(tag, home_base)
    subprocess.run(["userdel", "--remove", spare.username], check=True, capture_output=True)
    with pytest.raises(PodmanServiceError, match="no longer a spare"):
        spares.claim_spare_user(spare, "default", f"sp{secrets.token_hex(3)}")


def test_uninstall_removes_every_spare(home_base: Path) -> None:
    made = [spares.create_spare_user(secrets.token_hex(5), home_base) for _ in range(2)]
    removed = spares.remove_all_spare_users()
    assert {u.username for u in made} <= set(removed)
    for u in made:
        with pytest.raises(KeyError):
            pwd.getpwnam(u.username)
