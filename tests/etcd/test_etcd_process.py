from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from internal.state.etcd import EtcdClient
from internal.state.etcd_process import EtcdProcess, EtcdStartError, EtcdTLS
from internal.state.etcd_values import EtcdUnavailable
from tests.helpers import PkiFiles, env_of, free_port, requires_etcd, wait_until

Factory = Callable[..., EtcdProcess]
REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too; only a reaped or running process is not.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@requires_etcd
async def test_starts_healthy_with_tls_and_logs_to_data_dir(etcd_factory: Factory) -> None:
    proc = etcd_factory()
    async with proc:
        assert proc.running
        async with proc.client() as client:
            status = await client.status()
            assert status.has_leader and status.version.startswith("3.")
            assert [m.name for m in await client.member_list()] == [proc.name]
        assert stat.S_IMODE(proc.data_dir.stat().st_mode) == 0o700
        assert proc.log_file.parent == proc.data_dir
        assert "--client-cert-auth" in proc.command()
        assert "--peer-client-cert-auth" in proc.command()
    assert not proc.running
    log = proc.log_file.read_text()
    assert "kat: starting etcd" in log and '"msg":"serving client traffic securely"' in log


@requires_etcd
async def test_etcd_log_is_rotated_by_size_also_across_a_restart(etcd_factory: Factory) -> None:
    proc = etcd_factory(log_max_bytes=4096)
    async with proc:
        first = proc.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # the restarted etcd writes into the same rotation
        await wait_until(lambda: proc.restarts == 1, message="a restart")
        await proc.wait_healthy(10)
        rotated = proc.log_file.with_name("etcd.log.2")
        await wait_until(rotated.exists, message="etcd.log rotated twice")
    files = sorted(proc.data_dir.glob("etcd.log*"))
    assert 3 <= len(files) <= 6  # etcd.log and at most 5 kept
    text = ""
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600 and f.stat().st_size <= 4096, f
        text += f.read_text()
    assert text.count("kat: starting etcd") == 2 and "serving client traffic" in text


@requires_etcd
async def test_restarted_after_sigkill_keeping_data(
    etcd_factory: Factory, pki_dir: PkiFiles
) -> None:
    proc = etcd_factory()
    async with proc, env_of(proc, pki_dir).client(timeout=1.0) as client:
        await client.put("/k", b"before")
        first = proc.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: proc.restarts == 1, message="a restart")
        assert proc.pid != first
        await proc.wait_healthy(10)
        kv = await client.get("/k")
        assert kv is not None and kv.value == b"before"
    assert "exited" not in proc.log_tail()  # our own messages go to our log, not etcd's


@requires_etcd
async def test_stop_terminates_and_frees_ports(etcd_factory: Factory) -> None:
    proc = etcd_factory()
    await proc.start()
    try:
        await proc.wait_healthy()
        pid = proc.pid
        assert pid is not None
    finally:
        await proc.stop()
    assert not proc.running and not _alive(pid)
    assert proc.restarts == 0  # a requested stop is not a crash
    port = int(proc.client_urls[0].rsplit(":", 1)[1])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_missing_binary_is_a_clear_error(
    tmp_path: Path, pki_dir: PkiFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = dict(
        name="x",
        data_dir=tmp_path / "d",
        client_urls=["https://127.0.0.1:1"],
        peer_urls=["https://127.0.0.1:2"],
        tls=EtcdTLS(pki_dir.ca_cert, pki_dir.etcd_cert, pki_dir.etcd_key),
    )
    with pytest.raises(EtcdStartError, match="does not exist"):
        EtcdProcess(binary=tmp_path / "no-etcd-here", **args)  # type: ignore[arg-type]
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EtcdStartError, match="not on PATH"):
        EtcdProcess(**args)  # type: ignore[arg-type]


@requires_etcd
async def test_start_failure_reports_the_log(etcd_factory: Factory) -> None:
    proc = etcd_factory()
    port = int(proc.client_urls[0].rsplit(":", 1)[1])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        await proc.start()
        try:
            with pytest.raises(EtcdStartError, match="address already in use"):
                await proc.wait_healthy(20)
        finally:
            await proc.stop()


@requires_etcd
@pytest.mark.async_timeout(30)
async def test_etcd_dies_with_its_parent(tmp_path: Path, pki_dir: PkiFiles) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from pathlib import Path
        from tests.helpers import make_etcd_process, make_pki, PkiFiles

        async def main():
            pkif = PkiFiles(*[Path(p) for p in sys.argv[1:10]])
            proc = make_etcd_process(Path({str(tmp_path)!r}), pkif)
            await proc.start()
            print(proc.pid, flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    files = [str(getattr(pki_dir, f)) for f in pki_dir.__dataclass_fields__]
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *files, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(await asyncio.wait_for(parent.stdout.readline(), 20))
        assert _alive(child)
        parent.kill()
        await parent.wait()
        await wait_until(lambda: not _alive(child), message="etcd to die with its parent")
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if child and _alive(child):  # the test failed: do not leave etcd behind
            os.kill(child, signal.SIGKILL)


@requires_etcd
async def test_a_second_member_joins_an_existing_cluster_and_leaves(etcd_factory: Factory) -> None:
    # etcd's strict reconfiguration check would refuse the removal until the
    # members have been connected for 5 s ("unhealthy cluster").
    first = etcd_factory(name="m1", extra_args=["--strict-reconfig-check=false"])
    async with first, first.client() as client:
        peer = f"https://127.0.0.1:{free_port()}"
        added, members = await client.member_add([peer])
        assert added.peer_urls == (peer,) and len(members) == 2
        initial = {m.name or "m2": list(m.peer_urls) for m in members}
        second = etcd_factory(
            name="m2", peer_urls=[peer], initial_cluster=initial, initial_cluster_state="existing"
        )
        async with second:
            names = sorted(m.name for m in await client.member_list())
            assert names == ["m1", "m2"]
            await client.put("/shared", b"1")
            async with second.client() as via_second:
                kv = await via_second.get("/shared")
                assert kv is not None and kv.value == b"1"
            await client.member_remove(added.id)
            assert [m.name for m in await client.member_list()] == ["m1"]


@requires_etcd
@pytest.mark.async_timeout(40)
async def test_client_fails_over_when_a_member_of_three_dies(
    etcd_factory: Factory, pki_dir: PkiFiles
) -> None:
    peers = {f"m{i}": f"https://127.0.0.1:{free_port()}" for i in range(3)}
    members = [
        etcd_factory(name=n, peer_urls=[u], initial_cluster=peers, initial_cluster_state="new")
        for n, u in peers.items()
    ]
    try:
        for m in members:
            await m.start()
        await asyncio.gather(*(m.wait_healthy(20) for m in members))
        endpoints = [e for m in members for e in m.client_endpoints]
        env = env_of(members[0], pki_dir)
        client = EtcdClient(
            endpoints,
            ca_file=env.ca_file,
            cert_file=env.cert_file,
            key_file=env.key_file,
            timeout=1,
        )
        async with client:
            start = await client.revision() + 1
            events = client.watch("/fo/", prefix=True, start_revision=start)
            async with contextlib.aclosing(events):
                await client.put("/fo/a", b"1")
                assert [e.kv.key for e in await anext(events)] == ["/fo/a"]
                dead = next(m for m in members if client.current_endpoint in m.client_endpoints)
                await dead.stop()

                async def write_b() -> bool:
                    try:
                        await client.put("/fo/b", b"2")  # a write is not retried within a call
                    except EtcdUnavailable:
                        return False
                    return True

                await wait_until(write_b, message="a write through a live member")
                assert client.current_endpoint not in dead.client_endpoints
                kv = await client.get("/fo/b")
                assert kv is not None and kv.value == b"2"
                batch = await asyncio.wait_for(anext(events), 15)
                assert [e.kv.key for e in batch] == ["/fo/b"]  # the watch moved over too
    finally:
        # Short grace: a leader whose peers stop with it waits ~5 s trying to hand over.
        await asyncio.gather(*(m.stop(grace=1) for m in members))
