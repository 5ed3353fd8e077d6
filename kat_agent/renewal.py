"""Leaf certificates renewing themselves, without restarts.

- A node's certificate (every agent): a CSR for a new key, sent to the leader over the
  current certificate (AgentAPI.RenewCertificate); the key, then the certificate, are
  written atomically (0600 / 0644). Servers pick the files up on their next handshake
  and clients rebuild their channels (internal/security/certfiles.py).
- A member's API server certificate: issued by the member itself, which holds the CA
  key anyway, and recorded in the inventory.

When is decided by internal/core/certlife.py (two thirds of the life)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2
from internal.core import certlife
from internal.host.datadir import DataDir
from internal.security import pki, rpc

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext
    from kat_agent.node.agent import Agent

log = logging.getLogger(__name__)

# Never sleep longer than this between checks (a clock change, a file replaced by hand).
MAX_SLEEP = 3600.0


def next_wait(cert_pem: bytes, now: datetime) -> timedelta:
    info = pki.cert_info(cert_pem)
    return certlife.next_attempt(now, info.not_before, info.not_after)


def _due(cert_pem: bytes, now: datetime) -> bool:
    info = pki.cert_info(cert_pem)
    return certlife.renewal_due(now, info.not_before, info.not_after)


# ---------------------------------------------------------------- API server certificates


def leaf_problem(cert_path: Path, key_path: Path, ca_pem: bytes, now: datetime) -> str:
    """Why the certificate at `cert_path` needs re-issuing by its holder ("" if it is
    good): missing, not from this CA, expired, not matching its key, or two thirds of
    its life over (certlife)."""
    if not cert_path.exists() or not key_path.exists():
        return "none yet"
    cert = cert_path.read_bytes()
    try:
        pki.verify_certificate(ca_pem, cert, at=now)
        info = pki.cert_info(cert)
        if not pki.key_matches_certificate(cert, key_path.read_bytes()):
            return "its key does not match"
    except pki.CertificateError as exc:
        return str(exc)
    if certlife.renewal_due(now, info.not_before, info.not_after):
        return RENEWAL_DUE
    return ""


RENEWAL_DUE = "two thirds of its life are over"


def api_certificate_problem(dd: DataDir, ca_pem: bytes, now: datetime) -> str:
    """Why this member needs a new API certificate ("" if its current one is good)."""
    problem = leaf_problem(dd.api_cert, dd.api_key, ca_pem, now)
    if problem and problem != RENEWAL_DUE:
        return problem
    info = pki.cert_info(dd.api_cert.read_bytes())
    if info.role != rpc.ROLE_API or rpc.API_SERVER_NAME not in info.dns_names:
        return "not an API certificate"
    return problem


async def ensure_api_certificate(lc: LeaderContext, dd: DataDir, advertise: str) -> bool:
    """Issue this member's API certificate if it has none or it is due; True if issued."""
    problem = api_certificate_problem(dd, lc.ca_cert, datetime.now(UTC))
    if not problem:
        return False
    if lc.ca_key is None:
        raise RuntimeError("this member holds no CA key and cannot issue its API certificate")
    dns, ips = pki.serving_sans(lc.node_name, advertise, extra_dns=[rpc.API_SERVER_NAME])
    pair = pki.issue_certificate(
        lc.ca_cert,
        lc.ca_key,
        common_name=lc.node_name,
        role=rpc.ROLE_API,
        dns_names=dns,
        ip_addresses=ips,
        lifetime=certlife.lifetime(lc.spec),
    )
    pki.write_pair(dd.api_cert, dd.api_key, pair)
    log.info("issued the API certificate of %s (%s)", lc.node_name, problem)
    from kat_agent.leader.inventory import record_issued

    try:
        reason = "renewal" if problem == RENEWAL_DUE else "init"
        await record_issued(lc.store, pair.cert_pem, reason)
    except Exception as exc:  # noqa: BLE001 - the certificate works without its record
        log.warning("API certificate not recorded in the inventory: %s", exc)
    return True


async def run_api_certificate_renewal(lc: LeaderContext, dd: DataDir, advertise: str) -> None:
    while True:
        try:
            await ensure_api_certificate(lc, dd, advertise)
            wait = next_wait(dd.api_cert.read_bytes(), datetime.now(UTC)).total_seconds()
        except Exception as exc:  # noqa: BLE001 - retried
            log.warning("API certificate renewal failed: %s", exc)
            wait = 10.0
        await asyncio.sleep(min(max(wait, 1.0), MAX_SLEEP))


# ---------------------------------------------------------------- node certificates


async def renew_node_certificate(dd: DataDir, agent: Agent) -> None:
    """One renewal through the leader (raises grpc.RpcError / CertificateError)."""
    key = pki.generate_private_key()
    stub = agent.link.stub()
    resp: kat_pb2.RenewCertificateResponse = await stub.RenewCertificate(
        kat_pb2.RenewCertificateRequest(csr_pem=pki.create_csr(key)), timeout=30
    )
    cert = resp.certificate_pem
    pki.verify_certificate(dd.ca_cert.read_bytes(), cert)
    if not pki.key_matches_certificate(cert, key):
        raise pki.CertificateError("the leader's certificate is not for the key sent")
    pki.write_pair(dd.node_cert, dd.node_key, pki.CertAndKey(cert, key))
    info = pki.cert_info(cert)
    log.info("node certificate renewed, valid until %s", f"{info.not_after:%Y-%m-%d %H:%M:%S}")
    agent.link.refresh_credentials()


async def run_node_certificate_renewal(dd: DataDir, agent: Agent) -> None:
    while True:
        now = datetime.now(UTC)
        try:
            if _due(dd.node_cert.read_bytes(), now):
                await renew_node_certificate(dd, agent)
        except grpc.RpcError as err:
            log.warning("node certificate renewal refused: %s", err.details())  # type: ignore[attr-defined]
        except (OSError, pki.CertificateError) as exc:
            log.warning("node certificate renewal failed: %s", exc)
        try:
            wait = next_wait(dd.node_cert.read_bytes(), datetime.now(UTC)).total_seconds()
        except (OSError, pki.CertificateError):
            wait = 10.0
        await asyncio.sleep(min(max(wait, 1.0), MAX_SLEEP))
