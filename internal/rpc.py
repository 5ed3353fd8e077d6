"""gRPC plumbing shared by the leader, the agents and katcall: TLS credentials,
caller identity, and the "not the leader" redirect."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

ROLE_ADMIN = "kat:admin"
ROLE_NODE = "kat:node"

# Trailing metadata key a non-leader sets to the leader's API address.
LEADER_KEY = "kat-leader"
# Trailing metadata key the leader sets to the API endpoints of all members.
ENDPOINTS_KEY = "kat-endpoints"

KEEPALIVE_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect soon after a leader restarts (gRPC's default backs off to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
)
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
)


def mtls_server_credentials(cert: bytes, key: bytes, ca: bytes) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def tls_server_credentials(cert: bytes, key: bytes) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key, cert)], require_client_auth=False)


def client_credentials(
    ca: bytes, cert: bytes | None = None, key: bytes | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


@functools.lru_cache(maxsize=4096)
def _identity_from_pem(pem: bytes) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return (str(cn[0].value) if cn else "", str(org[0].value) if org else "")


def peer_identity(context: grpc.aio.ServicerContext) -> tuple[str, str] | None:
    """(common name, role) of the verified client certificate, or None."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    return _identity_from_pem(pems[0])


async def require_role(context: grpc.aio.ServicerContext, role: str) -> str:
    """Abort the call unless the caller holds a certificate with `role`; returns its CN."""
    ident = peer_identity(context)
    if ident is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    assert ident is not None
    cn, have = ident
    if have != role:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"certificate {cn!r} has role {have or 'none'!r}; this call needs {role!r}",
        )
    return cn


def leader_from_status(code: grpc.StatusCode | None, trailing: object) -> str | None:
    """The leader address a non-leader named in its UNAVAILABLE answer."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    for key, value in trailing or ():  # type: ignore[attr-defined]
        if key == LEADER_KEY and value:
            return str(value)
    return None


def leader_from_error(err: grpc.RpcError) -> str | None:
    return leader_from_status(err.code(), err.trailing_metadata())  # type: ignore[attr-defined]
