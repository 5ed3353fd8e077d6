"""A member's etcd certificates: made when missing, re-issued from etcd's CA once two
thirds of their life are over (or when broken), with the same names; keys 0600."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from internal.host.datadir import DataDir
from internal.security import pki
from kat_agent import etcd_certs
from kat_agent.bootstrap import ensure_etcd_ca
from kat_agent.renewal import RENEWAL_DUE

LIFE = timedelta(seconds=60)


def _dd(tmp_path: Path) -> DataDir:
    dd = DataDir(tmp_path / "data")
    dd.create()
    ensure_etcd_ca(dd)
    return dd


def test_made_then_renewed_at_two_thirds_with_the_same_names(tmp_path: Path) -> None:
    dd = _dd(tmp_path)
    made = etcd_certs.ensure_etcd_certificates(dd, "n1", "10.0.0.5", LIFE)
    assert [(i.leaf.what, i.problem) for i in made] == [
        ("etcd server/peer", "none yet"),
        ("etcd client", "none yet"),
    ]
    server, client = etcd_certs.server_leaf(dd), etcd_certs.client_leaf(dd)
    first = {leaf.what: pki.cert_info(leaf.cert.read_bytes()) for leaf in (server, client)}
    s = first["etcd server/peer"]
    assert (s.common_name, s.role) == ("n1", pki.ROLE_ETCD)
    assert set(s.ip_addresses) == {"10.0.0.5", "127.0.0.1"} and "localhost" in s.dns_names
    assert s.server_auth and s.client_auth  # peers are both
    assert first["etcd client"].common_name == "kat-agent-n1"
    assert s.not_after - s.not_before <= LIFE * 1.1

    now = datetime.now(UTC)
    assert etcd_certs.ensure_etcd_certificates(dd, "n1", "10.0.0.5", LIFE, now=now) == []
    later = s.not_before + (s.not_after - s.not_before) * 0.7
    again = etcd_certs.ensure_etcd_certificates(dd, "n1", "10.0.0.5", LIFE, now=later)
    assert [i.problem for i in again] == [RENEWAL_DUE, RENEWAL_DUE]
    for leaf in (server, client):
        info = pki.cert_info(leaf.cert.read_bytes())
        old = first[leaf.what]
        assert info.serial != old.serial and info.not_after >= old.not_after  # issued now
        assert (info.common_name, info.dns_names, info.ip_addresses) == (
            old.common_name,
            old.dns_names,
            old.ip_addresses,
        )
        assert pki.key_matches_certificate(leaf.cert.read_bytes(), leaf.key.read_bytes())
        assert stat.S_IMODE(leaf.key.stat().st_mode) == 0o600
        ca = (dd.etcd_pki / "ca.crt").read_bytes()
        pki.verify_certificate(ca, leaf.cert.read_bytes())


def test_a_broken_pair_or_a_foreign_certificate_is_reissued(tmp_path: Path) -> None:
    dd = _dd(tmp_path)
    etcd_certs.ensure_etcd_certificates(dd, "n1", "10.0.0.5", LIFE)
    server, client = etcd_certs.server_leaf(dd), etcd_certs.client_leaf(dd)
    pki.write_private_key(server.key, pki.generate_private_key())  # key without its cert
    other = pki.create_ca("someone-else")
    pki.write_pair(
        client.cert,
        client.key,
        pki.issue_certificate(other.cert_pem, other.key_pem, common_name="x", role=pki.ROLE_ETCD),
    )
    done = etcd_certs.ensure_etcd_certificates(dd, "n1", "10.0.0.5", LIFE)
    assert done[0].problem == "its key does not match"
    assert "not issued by this CA" in done[1].problem
    assert etcd_certs.ensure_etcd_certificates(dd, "n1", "10.0.0.5", LIFE) == []


def test_nothing_before_start_without_the_etcd_ca_key(tmp_path: Path) -> None:
    dd = DataDir(tmp_path / "joined")
    dd.create()
    etcd_certs.ensure_before_start(dd, "n2", "10.0.0.6", LIFE)  # a joined member's first start
    assert not etcd_certs.server_leaf(dd).cert.exists()
