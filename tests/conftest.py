"""Fixtures shared by all tests.

- `async def test_...` functions run in a fresh event loop (no plugin needed),
  bounded by 60 s or `@pytest.mark.async_timeout(seconds)`.
- `pki_dir`: a CA and certificates for 127.0.0.1 in tmp_path (tests/helpers.PkiFiles).
- `etcd`: a real etcd with TLS, shared by the session and emptied before each
  test (tests/helpers.EtcdEnv: endpoints, TLS files, `client()`). Do not stop it.
- `etcd_factory`: `etcd_factory(**EtcdProcess kwargs)` makes a private,
  not yet started member in tmp_path for tests that stop or kill etcd; it is
  killed at teardown if the test left it running.
Tests needing etcd are skipped with a clear reason when `etcd` is not on PATH.

Isolation from a KAT running on the same machine (e.g. the README's quickstart, with
/var/lib/kat and ~/.kat/config): workload users made by the tests' agents get a prefix of
this session (`KAT_WORKLOAD_USER_PREFIX`, set here before anything starts, inherited by
every agent the tests start), so they never share a user, its Podman storage, runtime dir
or processes with that KAT and never adopt its users; `foreign_kat_guard` checks at the
end of the session that the default-prefix workload users and their processes are as
they were (tests/isolation.py).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from internal.state.etcd_process import EtcdProcess
from tests.helpers import (
    HAVE_ETCD,
    NO_ETCD_REASON,
    EtcdEnv,
    LoopThread,
    PkiFiles,
    env_of,
    kill_if_still_running,
    make_etcd_process,
    make_pki,
)

DEFAULT_ASYNC_TIMEOUT = 60.0

# Set at import, before any fixture starts an agent (children inherit it).
os.environ.setdefault("KAT_WORKLOAD_USER_PREFIX", f"kt{secrets.token_hex(2)}_")
# No spare workload users (kat_agent/node/podman/spares.py) unless a test asks for them
# (tests/cluster/test_spare_users.py): each would be one more user and Podman service per
# agent the suite starts, and most tests count the users a workload leaves.
os.environ.setdefault("KAT_SPARE_WORKLOAD_USERS", "0")


@pytest.fixture(scope="session", autouse=True)
def foreign_kat_guard() -> Iterator[None]:
    """Fail the session if the tests touched another KAT's workload users on this
    machine (removed them, stopped their containers, or made their Podman lose sight of
    them); remove the workload users this session made."""
    from tests.isolation import foreign_workload_state, remove_own_workload_users

    before = foreign_workload_state()
    yield
    remove_own_workload_users()
    after = foreign_workload_state()
    lost = {user: ids - after.get(user, set()) for user, ids in before.items()}
    lost = {user: ids for user, ids in lost.items() if ids or user not in after}
    assert not lost, f"the tests touched workload users of another KAT: {lost}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "async_timeout(seconds): limit for an async test (default 60 s)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    marker = pyfuncitem.get_closest_marker("async_timeout")
    limit = float(marker.args[0]) if marker else DEFAULT_ASYNC_TIMEOUT
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), limit))
    return True


@pytest.fixture
def pki_dir(tmp_path: Any) -> PkiFiles:
    return make_pki(tmp_path / "pki")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdEnv]:
    if not HAVE_ETCD:
        pytest.skip(NO_ETCD_REASON)
    base = tmp_path_factory.mktemp("etcd-session")
    pkif = make_pki(base / "pki")
    process = make_etcd_process(base, pkif)
    loop = LoopThread()
    try:
        loop.run(process.__aenter__())
        yield env_of(process, pkif)
    finally:
        try:
            loop.run(process.stop())
        finally:
            kill_if_still_running(process)
            loop.close()


async def _wipe(env: EtcdEnv) -> None:
    async with env.client() as client:
        await client.delete_prefix("")


@pytest.fixture
def etcd(etcd_server: EtcdEnv) -> EtcdEnv:
    asyncio.run(_wipe(etcd_server))
    return etcd_server


@pytest.fixture
def etcd_factory(tmp_path: Any, pki_dir: PkiFiles) -> Iterator[Callable[..., EtcdProcess]]:
    if not HAVE_ETCD:
        pytest.skip(NO_ETCD_REASON)
    made: list[EtcdProcess] = []

    def make(**kwargs: Any) -> EtcdProcess:
        process = make_etcd_process(tmp_path / f"member{len(made)}", pki_dir, **kwargs)
        made.append(process)
        return process

    yield make
    for process in made:
        kill_if_still_running(process)
