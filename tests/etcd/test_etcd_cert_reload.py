"""Renewed etcd certificates taken without restarts, on a real etcd: etcd serves a
replaced server/peer certificate from its next handshake on, and EtcdClient moves its
calls and running watches to a replaced client certificate (nothing missed or
repeated), also once the old certificate has expired and etcd restarted."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from internal.security import pki
from internal.state.etcd import EtcdClient
from internal.state.etcd_process import EtcdProcess
from internal.state.etcd_values import EtcdError
from tests.helpers import PkiFiles, requires_etcd, served_serial, wait_until

Factory = Callable[..., EtcdProcess]


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _client_pair(pki_dir: PkiFiles, cert: Path, key: Path, lifetime: dt.timedelta) -> str:
    ca = pki_dir.ca()
    pair = pki.issue_certificate(
        ca.cert_pem, ca.key_pem, common_name="kat-agent-t", role=pki.ROLE_ETCD, lifetime=lifetime
    )
    pki.write_pair(cert, key, pair)
    return pki.cert_info(pair.cert_pem).serial


async def _put(client: EtcdClient, key: str) -> bool:
    try:
        await client.put(key, b"x")
    except EtcdError:
        return False
    return True


@requires_etcd
async def test_etcd_serves_a_replaced_server_certificate_without_restart(
    etcd_factory: Factory, pki_dir: PkiFiles
) -> None:
    proc = etcd_factory()
    async with proc:
        pid = proc.pid
        client_port, peer_port = _hostport(proc.client_urls[0]), _hostport(proc.peer_urls[0])
        auth = (pki_dir.etcd_cert, pki_dir.etcd_key)
        first = await asyncio.to_thread(served_serial, *client_port, *auth)
        assert first == pki.cert_info(pki_dir.etcd_cert.read_bytes()).serial
        ca = pki_dir.ca()
        # Written as the renewal writes it: key then certificate, each atomically.
        pair = pki.issue_serving_certificate(
            ca.cert_pem,
            ca.key_pem,
            node_name="etcd-test",
            advertise_ip="127.0.0.1",
            role=pki.ROLE_ETCD,
        )
        pki.write_pair(pki_dir.etcd_cert, pki_dir.etcd_key, pair)
        new = pki.cert_info(pair.cert_pem).serial
        assert new != first
        assert await asyncio.to_thread(served_serial, *client_port, *auth) == new
        assert await asyncio.to_thread(served_serial, *peer_port, *auth) == new
        async with proc.client() as client:
            await client.put("after", b"renewal")
            assert (await client.get("after")) is not None
        assert proc.pid == pid and proc.restarts == 0


@requires_etcd
async def test_client_moves_to_a_renewed_certificate_and_watches_lose_nothing(
    etcd_factory: Factory, pki_dir: PkiFiles, tmp_path: Path
) -> None:
    proc = etcd_factory()
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    # The first certificate expires within seconds: once it has, only a connection made
    # with the renewed one is let in by etcd.
    _client_pair(pki_dir, cert, key, dt.timedelta(seconds=8))
    old = (cert.read_bytes(), key.read_bytes())
    expired = tmp_path / "old.crt", tmp_path / "old.key"
    expired[0].write_bytes(old[0])
    expired[1].write_bytes(old[1])
    async with proc:
        client = EtcdClient(
            proc.client_endpoints,
            ca_file=pki_dir.ca_cert,
            cert_file=cert,
            key_file=key,
            timeout=2.0,
            retire_after=1.0,
        )
        seen: list[str] = []

        async def watch(since: int) -> None:
            async for batch in client.watch("/w/", prefix=True, start_revision=since):
                seen.extend(e.kv.key for e in batch)

        async with client:
            task = asyncio.create_task(watch(await client.revision() + 1))
            try:
                await client.put("/w/1", b"1")
                await wait_until(lambda: seen == ["/w/1"], within=10, message="first event")
                assert not client.refresh_credentials()  # nothing changed
                renewed = pki_dir.ca()
                pair = pki.issue_certificate(
                    renewed.cert_pem, renewed.key_pem, common_name="kat-agent-t", role=pki.ROLE_ETCD
                )
                # Half written (new key, old certificate): not taken.
                pki.write_private_key(key, pair.key_pem)
                assert not client.refresh_credentials()
                pki.write_certificate(cert, pair.cert_pem)
                assert client.refresh_credentials()
                assert not client.refresh_credentials()
                await client.put("/w/2", b"2")
                # Past the old certificate's end and the old channels' retirement.
                not_after = pki.cert_info(old[0]).not_after
                await wait_until(
                    lambda: dt.datetime.now(dt.UTC) > not_after + dt.timedelta(seconds=1.5),
                    within=20,
                    interval=0.2,
                    message="the first certificate expired",
                )
                async with EtcdClient(
                    proc.client_endpoints,
                    ca_file=pki_dir.ca_cert,
                    cert_file=expired[0],
                    key_file=expired[1],
                    timeout=2.0,
                ) as stale:
                    with pytest.raises(EtcdError):
                        await stale.get("/w/1")  # etcd refuses the expired one
                # A restart of etcd breaks every connection: the client can only come
                # back with the renewed certificate.
                assert proc.pid is not None
                os.kill(proc.pid, signal.SIGKILL)
                await wait_until(lambda: proc.restarts == 1, within=20, message="etcd restarted")
                await wait_until(lambda: _put(client, "/w/3"), within=20, message="a put after it")
                await client.put("/w/4", b"4")
                async with proc.client() as other:
                    await other.put("/w/5", b"5")
                want = [f"/w/{i}" for i in range(1, 6)]
                await wait_until(lambda: seen == want, within=15, message=f"events {want}")
                assert (await client.get("/w/4")) is not None
                assert seen == want  # none twice
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
