"""A cluster made before the CA keys in etcd were sealed (an older KAT, e.g. a quickstart
node upgraded in place) is sealed at its member's next start when it is the only member;
with several members it is left as it is (the others would lack the secret) and the log
says how to seal it. The store is an in-memory stand-in for the few calls involved."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from internal.host.datadir import DataDir
from kat_agent import bootstrap
from kat_agent.daemon import _seal_clear_material


class _Etcd:
    def __init__(self, members: int) -> None:
        self.members = members

    async def member_list(self) -> list[object]:
        return [object()] * self.members


class _Store:
    def __init__(self, material: kat_pb2.CAMaterial, members: int) -> None:
        self.material = material
        self.etcd = _Etcd(members)

    async def get_ca_material(self) -> kat_pb2.CAMaterial:
        return self.material

    async def replace_ca_material(self, material: kat_pb2.CAMaterial) -> None:
        self.material = material


def _clear_material(dd: DataDir) -> kat_pb2.CAMaterial:
    bootstrap.ensure_cluster_pki(dd)
    return kat_pb2.CAMaterial(
        ca_cert_pem=dd.ca_cert.read_bytes(),
        ca_key_pem=dd.ca_key.read_bytes(),
        etcd_ca_cert_pem=(dd.etcd_pki / "ca.crt").read_bytes(),
        etcd_ca_key_pem=(dd.etcd_pki / "ca.key").read_bytes(),
    )


async def test_a_single_member_cluster_is_sealed_in_place(tmp_path: Path) -> None:
    dd = DataDir(tmp_path / "kat")
    dd.create()
    store = _Store(_clear_material(dd), members=1)
    await _seal_clear_material(dd, store)  # type: ignore[arg-type]
    m = store.material
    assert m.sealed_ca_key and not m.ca_key_pem and not m.etcd_ca_key_pem
    assert b"PRIVATE KEY" not in m.SerializeToString()
    assert dd.cluster_secret.stat().st_mode & 0o777 == 0o600
    secret = dd.cluster_secret.read_bytes()
    from internal.security import sealing

    ca_key, _ = bootstrap.open_material(m, sealing.read_secret(dd.cluster_secret))
    assert ca_key == dd.ca_key.read_bytes() and secret


async def test_several_members_are_left_clear_and_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dd = DataDir(tmp_path / "kat")
    dd.create()
    clear = _clear_material(dd)
    store = _Store(clear, members=3)
    with caplog.at_level(logging.WARNING):
        await _seal_clear_material(dd, store)  # type: ignore[arg-type]
    assert store.material is clear
    assert "in the clear" in caplog.text and "--cluster-secret-file" in caplog.text
