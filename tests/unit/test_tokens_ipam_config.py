"""Pure pieces of the control plane: join tokens, node subnets, katcall config."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from internal.core import ipam, tokens
from internal.security import clientconfig
from kat_agent.leader.agent_api import node_name_candidates
from katcall import output

CA = "sha256:" + "ab" * 32
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def test_token_round_trip_and_checks() -> None:
    record, text = tokens.new_token(CA, 9117, now=NOW, ttl=timedelta(hours=1), max_uses=2)
    parsed = tokens.parse(text)
    assert parsed.ca_hash == "ab" * 32 and parsed.join_port == 9117
    assert parsed.token_id == record.id
    assert parsed.secret not in record.SerializeToString().decode(errors="ignore")
    tokens.check(record, parsed.secret, now=NOW)  # usable
    with pytest.raises(tokens.TokenError, match="invalid join token"):
        tokens.check(record, "x" * 32, now=NOW)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.check(record, parsed.secret, now=NOW + timedelta(hours=2))
    record.uses = 2
    with pytest.raises(tokens.TokenError, match="used 2 times"):
        tokens.check(record, parsed.secret, now=NOW)
    record.uses, record.revoked = 0, True
    with pytest.raises(tokens.TokenError, match="revoked"):
        tokens.check(record, parsed.secret, now=NOW)
    with pytest.raises(tokens.TokenError, match="invalid join token"):
        tokens.check(None, parsed.secret, now=NOW)


@pytest.mark.parametrize("bad", ["", "KAT1", "KAT1.zz.9117.abcdef." + "a" * 32, "KAT2" + "x" * 100])
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(tokens.TokenError, match="malformed"):
        tokens.parse(bad)


def test_token_ttl_must_be_positive() -> None:
    with pytest.raises(tokens.TokenError):
        tokens.new_token(CA, 9117, now=NOW, ttl=timedelta(0))


def test_node_subnets_are_disjoint_and_skip_used() -> None:
    subnets = list(ipam.node_subnets("10.100.0.0/16", 7))
    assert len(subnets) == 128 and all(s.prefixlen == 23 for s in subnets)
    free = list(ipam.free_subnets("10.100.0.0/16", 7, ["10.100.0.0/23", "10.100.4.0/23"]))
    assert free[:2] == ["10.100.2.0/23", "10.100.6.0/23"]
    nets = [ipaddress.ip_network(f) for f in free]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
    assert ipam.node_prefix("10.100.0.0/16", 7) == 23


def test_node_names_are_dns_labels() -> None:
    names = node_name_candidates("My_Host.Example")
    assert names[0] == "my-host-example" and names[1] == "my-host-example-2"
    assert node_name_candidates("---")[0] == "node"


def test_client_config_round_trip_is_private(tmp_path: Path) -> None:
    cfg = clientconfig.ClientConfig()
    cfg.upsert(clientconfig.Context("a", ["10.0.0.1:9115"], b"CA", b"CERT", b"KEY"))
    cfg.upsert(
        clientconfig.Context("b", ["10.0.0.2:9115"], b"CA2", b"C2", b"K2"), make_current=False
    )
    path = tmp_path / "config"
    clientconfig.save(cfg, path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = clientconfig.load(path)
    assert loaded.current == "a"
    assert loaded.context("b").endpoints == ["10.0.0.2:9115"]
    with pytest.raises(clientconfig.ConfigError, match="no context named 'c'"):
        loaded.context("c")
    with pytest.raises(clientconfig.ConfigError, match="no katcall config"):
        clientconfig.load(tmp_path / "missing")


def test_katconfig_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KATCONFIG", str(tmp_path / "x"))
    assert clientconfig.resolve_path() == tmp_path / "x"
    assert clientconfig.resolve_path(str(tmp_path / "y")) == tmp_path / "y"
    monkeypatch.delenv("KATCONFIG")
    assert clientconfig.resolve_path() == Path("~/.kat/config").expanduser()


def test_output_helpers() -> None:
    assert output.age(5) == "5s" and output.age(600) == "10m" and output.age(7200) == "2h"
    assert output.approx_memory(64 << 20) == "64Mi"
    assert output.approx_memory(int(1.5 * (1 << 30))) == "1.5Gi"
    assert output.table(["A", "BB"], [["x", "y"]]).splitlines() == ["A   BB", "x   y"]


def test_peer_subject_parsing() -> None:
    from internal.security.rpc import parse_subject

    assert parse_subject("CN=vm-2,O=kat:node") == {"CN": "vm-2", "O": "kat:node"}
    assert parse_subject("O=kat:admin,CN=a\\,b") == {"O": "kat:admin", "CN": "a,b"}
    assert parse_subject("") == {}


@pytest.mark.parametrize(
    "bad",
    ["", "abcdef", "abcdef." + "a" * 31, "ABCDEF." + "a" * 32, "x" * 4096, "abcdef." + "a" * 33],
)
def test_credential_format_is_checked_first_with_one_answer(bad: str) -> None:
    with pytest.raises(tokens.TokenError) as err:
        tokens.parse_credential(bad)
    assert str(err.value) == tokens.REFUSED  # nothing of the input is echoed


def test_default_tokens_are_worker_only() -> None:
    record, _ = tokens.new_token(CA, 9117, now=NOW)
    assert not record.etcd_member
    member, _ = tokens.new_token(CA, 9117, now=NOW, etcd_member=True)
    assert member.etcd_member
