"""The test suite never touches a KAT running on the same machine (README: the quickstart's
cluster keeps its workloads while `pytest tests` runs). Its agents name their workload
users with a prefix of the session (tests/conftest.py), so a rootless node runtime of a
test neither takes over nor adopts (and so never stops) the users of another KAT."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from kat_agent.node.podman import users as svc
from kat_agent.node.podman.errors import PodmanServiceError
from kat_agent.node.podman.services import NodeSettings, PodmanPool
from tests.isolation import foreign_workload_users

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd"
)


def test_tests_use_workload_users_of_their_own() -> None:
    prefix = os.environ["KAT_WORKLOAD_USER_PREFIX"]
    assert prefix != svc.USERNAME_PREFIX
    name = svc.workload_username("default", "web")
    assert name.startswith(prefix) and name != "kat_wl_default_web"
    long = svc.workload_username("a-very-long-namespace", "and-a-long-workload-name")
    assert long.startswith(prefix) and len(long) <= svc.MAX_USERNAME


def test_a_bad_prefix_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAT_WORKLOAD_USER_PREFIX", "Bad-Prefix")
    with pytest.raises(PodmanServiceError, match="KAT_WORKLOAD_USER_PREFIX"):
        svc.workload_username("default", "web")


@needs_root
def test_another_kats_workload_user_is_not_adopted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user made by "another KAT" (the default prefix, a namespace no real cluster uses)
    with Podman storage in its home: a test node runtime does not see it, and the guard
    of the suite counts it as foreign."""
    homes = Path(tempfile.mkdtemp(prefix="kat-iso-homes-"))
    homes.chmod(0o755)
    ns, name = f"iso{secrets.token_hex(3)}", "web"
    # "another KAT" keeps its users' homes where the agent does by default
    monkeypatch.setattr("tests.isolation.DEFAULT_HOME_BASE", homes)
    ours = os.environ["KAT_WORKLOAD_USER_PREFIX"]
    monkeypatch.setenv("KAT_WORKLOAD_USER_PREFIX", svc.USERNAME_PREFIX)
    try:
        other = svc.ensure_workload_user(ns, name, home_base=homes)
        (other.home / ".local" / "share" / "containers" / "storage").mkdir(parents=True)
        monkeypatch.setenv("KAT_WORKLOAD_USER_PREFIX", ours)
        assert other.username in foreign_workload_users()
        mine = svc.ensure_workload_user(ns, name, home_base=homes)
        try:
            assert mine.username != other.username and mine.uid != other.uid
            (mine.home / ".local" / "share" / "containers" / "storage").mkdir(parents=True)
            run = Path(tempfile.mkdtemp(prefix="kat-iso-run-"))
            pool = PodmanPool(NodeSettings("iso", run / "state", run, home_base=homes))
            found = {u.username for u in pool._users_with_storage()}
            assert mine.username in found and other.username not in found
            shutil.rmtree(run, ignore_errors=True)
        finally:
            assert svc.remove_workload_user(ns, name)
        # our cleanup removed only our user
        assert other.username in foreign_workload_users()
    finally:
        monkeypatch.setenv("KAT_WORKLOAD_USER_PREFIX", svc.USERNAME_PREFIX)
        svc.remove_workload_user(ns, name)
        shutil.rmtree(homes, ignore_errors=True)
