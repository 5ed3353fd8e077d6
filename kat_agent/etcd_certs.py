"""A member's etcd certificates, issued under etcd's own CA (node certificates cannot
reach etcd), and their renewal by the member itself, without restarts.

- server/peer (`pki/etcd/server.crt`): etcd serves it to clients and presents it to
  its peers. etcd reads the files again on every new TLS handshake (verified on etcd
  3.4, tests/etcd/test_etcd_cert_reload.py), so a renewed pair is served from the next
  connection on; connections already open keep going.
- client (`pki/etcd/client.crt`): the local agent's certificate for etcd. After a
  renewal `EtcdClient.refresh_credentials()` moves its calls and watches to channels
  that handshake with the new one.

A member holds the etcd CA key (`pki/etcd/ca.key`, 0600; replicated to members only
inside the sealed CA material, see bootstrap.ca_material): it re-issues a certificate
once two thirds of its life are over (renewal.leaf_problem, certlife), also before
etcd starts (a member that was down past the end of its certificates). Key first,
then certificate, each written atomically (0600 / 0644).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from internal.core import certlife
from internal.host.datadir import DataDir
from internal.security import pki
from kat_agent.renewal import MAX_SLEEP, RENEWAL_DUE, leaf_problem, next_wait

if TYPE_CHECKING:
    from internal.state.etcd import EtcdClient
    from kat_agent.leader.context import LeaderContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EtcdLeaf:
    what: str
    cert: Path
    key: Path
    server: bool  # serverAuth for clients and peers, with the member's names


def server_leaf(dd: DataDir) -> EtcdLeaf:
    p = dd.etcd_pki
    return EtcdLeaf("etcd server/peer", p / "server.crt", p / "server.key", True)


def client_leaf(dd: DataDir) -> EtcdLeaf:
    p = dd.etcd_pki
    return EtcdLeaf("etcd client", p / "client.crt", p / "client.key", False)


def etcd_ca(dd: DataDir) -> pki.CertAndKey:
    return pki.read_pair(dd.etcd_pki / "ca.crt", dd.etcd_pki / "ca.key")


def server_names(node_name: str, advertise: str) -> tuple[list[str], list[str]]:
    """(DNS names, IPs) of a member's etcd server/peer certificate (also at join)."""
    return pki.serving_sans(node_name, advertise)


def client_common_name(node_name: str) -> str:
    return f"kat-agent-{node_name}"


def issue(
    ca: pki.CertAndKey,
    leaf: EtcdLeaf,
    node_name: str,
    advertise: str,
    lifetime: timedelta | None,
) -> pki.CertAndKey:
    if leaf.server:
        dns, ips = server_names(node_name, advertise)
        return pki.issue_certificate(
            ca.cert_pem,
            ca.key_pem,
            common_name=node_name,
            role=pki.ROLE_ETCD,
            dns_names=dns,
            ip_addresses=ips,
            lifetime=lifetime,
        )
    return pki.issue_certificate(
        ca.cert_pem,
        ca.key_pem,
        common_name=client_common_name(node_name),
        role=pki.ROLE_ETCD,
        lifetime=lifetime,
    )


@dataclass(frozen=True)
class Issued:
    leaf: EtcdLeaf
    cert_pem: bytes
    problem: str


def ensure_etcd_certificates(
    dd: DataDir,
    node_name: str,
    advertise: str,
    lifetime: timedelta | None,
    *,
    ca: pki.CertAndKey | None = None,
    now: datetime | None = None,
) -> list[Issued]:
    """Issue this member's etcd certificates that are missing, broken or due, from
    etcd's CA (`ca`, else the one in the data dir); what was issued, and why."""
    ca = ca or etcd_ca(dd)
    now = now or datetime.now(UTC)
    issued: list[Issued] = []
    for leaf in (server_leaf(dd), client_leaf(dd)):
        problem = leaf_problem(leaf.cert, leaf.key, ca.cert_pem, now)
        if not problem:
            continue
        pair = issue(ca, leaf, node_name, advertise, lifetime)
        pki.write_pair(leaf.cert, leaf.key, pair)
        info = pki.cert_info(pair.cert_pem)
        log.info(
            "issued the %s certificate of %s (%s), valid until %s",
            leaf.what,
            node_name,
            problem,
            f"{info.not_after:%Y-%m-%d %H:%M:%S}",
        )
        issued.append(Issued(leaf, pair.cert_pem, problem))
    return issued


def ensure_before_start(
    dd: DataDir, node_name: str, advertise: str, lifetime: timedelta | None
) -> None:
    """Before etcd starts: a member holding the etcd CA key re-issues what is due
    (a joined member before its first start has fresh certificates and no key yet)."""
    if not (dd.etcd_pki / "ca.key").exists():
        return
    ensure_etcd_certificates(dd, node_name, advertise, lifetime)


async def _record(lc: LeaderContext, cert_pem: bytes, reason: str) -> None:
    from kat_agent.leader.inventory import record_issued

    try:
        await record_issued(lc.store, cert_pem, reason)
    except Exception as exc:  # noqa: BLE001 - the certificate works without its record
        log.warning("etcd certificate not recorded in the inventory: %s", exc)


async def run_etcd_certificate_renewal(
    lc: LeaderContext, dd: DataDir, advertise: str, etcd: EtcdClient
) -> None:
    """Keep this member's etcd certificates renewed and the agent's etcd client on the
    current one. The certificates in use at start are recorded in the inventory too
    (made at init or join, before etcd could take a record)."""
    leaves = (server_leaf(dd), client_leaf(dd))
    for leaf in leaves:
        if leaf.cert.exists():
            await _record(lc, leaf.cert.read_bytes(), "in use at member start")
    while True:
        try:
            issued = await asyncio.to_thread(
                ensure_etcd_certificates,
                dd,
                lc.node_name,
                advertise,
                certlife.lifetime(lc.spec),
                ca=lc.etcd_ca,
            )
            # Also after a pair was replaced by hand: the client follows the files.
            if etcd.refresh_credentials():
                log.info("etcd client moved to its renewed certificate")
            for done in issued:
                reason = "renewal" if done.problem == RENEWAL_DUE else "reissue"
                await _record(lc, done.cert_pem, reason)
            now = datetime.now(UTC)
            wait = min(next_wait(leaf.cert.read_bytes(), now).total_seconds() for leaf in leaves)
        except Exception as exc:  # noqa: BLE001 - retried
            log.warning("etcd certificate renewal failed: %s", exc)
            wait = 10.0
        await asyncio.sleep(min(max(wait, 1.0), MAX_SLEEP))
