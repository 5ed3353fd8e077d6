"""The cluster secret and the CA keys it seals (internal/security/sealing.py, bootstrap)."""

from __future__ import annotations

from pathlib import Path

import pytest

from internal.security import pki, sealing
from kat_agent import bootstrap


def test_sealed_material_holds_no_private_key_and_opens_only_with_its_secret() -> None:
    ca, etcd_ca = pki.create_ca("kat-ca"), pki.create_ca("kat-etcd-ca")
    secret = sealing.new_secret()
    material = bootstrap.seal_material(
        secret,
        ca_cert_pem=ca.cert_pem,
        ca_key_pem=ca.key_pem,
        etcd_ca_cert_pem=etcd_ca.cert_pem,
        etcd_ca_key_pem=etcd_ca.key_pem,
    )
    stored = material.SerializeToString()
    assert b"PRIVATE KEY" not in stored and ca.key_pem not in stored
    assert bootstrap.open_material(material, secret) == (ca.key_pem, etcd_ca.key_pem)
    with pytest.raises(sealing.SecretError, match="needed"):
        bootstrap.open_material(material, None)
    with pytest.raises(sealing.SecretError, match="wrong secret"):
        bootstrap.open_material(material, sealing.new_secret())
    # the purpose is authenticated: the etcd CA key cannot stand in for the cluster CA key
    material.sealed_ca_key = material.sealed_etcd_ca_key
    material.secret_id = ""
    with pytest.raises(sealing.SecretError, match="does not open the cluster CA key"):
        bootstrap.open_material(material, secret)


def test_material_from_before_sealing_opens_without_a_secret() -> None:
    ca = pki.create_ca()
    old = bootstrap.kat_pb2.CAMaterial(ca_key_pem=ca.key_pem, etcd_ca_key_pem=b"e")
    assert bootstrap.open_material(old, None) == (ca.key_pem, b"e")


def test_secret_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "cluster-secret"
    secret = sealing.ensure_secret(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert sealing.ensure_secret(path) == secret == sealing.read_secret(path)
    bad = tmp_path / "bad"
    bad.write_text("not hex\n")
    with pytest.raises(sealing.SecretError, match="not a KAT cluster secret"):
        sealing.read_secret(bad)
    with pytest.raises(sealing.SecretError, match="cannot read"):
        sealing.read_secret(tmp_path / "missing")
