"""gRPC plumbing shared by the leader, the agents and katcall: TLS credentials,
caller identity, and the "not the leader" redirect."""

from __future__ import annotations

import functools
import hashlib
import ssl
from collections.abc import Sequence

import grpc

ROLE_ADMIN = "kat:admin"
ROLE_NODE = "kat:node"
ROLE_MONITORING = "kat:monitoring"  # /metrics only (internal/observability/metrics_http.py)
ROLE_API = "kat:api"  # a member's API server certificate (serverAuth only)
# The roles a person's client certificate may have, by the name commands take
# (`katcall admin create --role`, `kat-agent certificate --role`).
CLIENT_ROLES = {"monitoring": ROLE_MONITORING, "admin": ROLE_ADMIN}
# Every client of the cluster API (katcall, agents, tests) checks the server for this DNS
# name instead of the address it dialled: the signer puts it in kat:api certificates
# only, so a node certificate (which holds the node's own IP) cannot pose as the API.
API_SERVER_NAME = "api.kat.internal"

# Trailing metadata key a non-leader sets to the leader's API address.
LEADER_KEY = "kat-leader"
# Trailing metadata key the leader sets to the API endpoints of all members.
ENDPOINTS_KEY = "kat-endpoints"
# Trailing metadata of a refusal because the caller's node certificate is no longer its
# node's (the node was removed): the agent leaves the cluster when it keeps hearing it.
REVOKED_KEY = "kat-revoked"

# Liveness of every long-lived channel and stream. A silent peer (a cable pulled, a
# link down, a NAT that forgot us: nothing closes the socket) is noticed within
# KEEPALIVE_TIME + KEEPALIVE_TIMEOUT (about 4 s): the connection is closed and every call
# on it fails with UNAVAILABLE, so streams are reopened instead of waiting for ever.
KEEPALIVE_TIME_MS = 2_000
KEEPALIVE_TIMEOUT_MS = 2_000
KEEPALIVE_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect soon after a leader restarts (gRPC's default backs off to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
)
# The server pings too (the leader notices a silent agent's streams and closes them), and
# accepts the clients' pings at their rate: gRPC's default would answer pings more often
# than every 5 min with GOAWAY "too_many_pings".
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS + 1_000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # TLS records this server writes are at most 4 KB (gRPC's default: 16 KB). The
    # buffer of that size is kept per connection for its life: with 1,000 nodes
    # connected, 16 MB less (bench_scale: leader 221 -> 205 MB; issue 14). Only what this
    # side writes is framed smaller; what it reads is unaffected.
    ("grpc.tsi.max_frame_size", 4096),
    # gRPC sets SO_REUSEPORT by default: a second process binding a port in use would
    # share it silently (and a client could reach the wrong server); fail loudly instead.
    ("grpc.so_reuseport", 0),
)

# The certificate-less join port: a JoinRequest is a few KB (three CSRs at most).
JOIN_SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", 64 * 1024),
    ("grpc.max_metadata_size", 16 * 1024),
    ("grpc.max_concurrent_streams", 16),
    ("grpc.so_reuseport", 0),
)
JOIN_MAX_CONCURRENT = 64


def api_channel_options(
    options: Sequence[tuple[str, int | str]] = KEEPALIVE_OPTIONS,
) -> list[tuple[str, int | str]]:
    """Options of every channel to the cluster API: `options` plus the API name check."""
    return [*options, ("grpc.ssl_target_name_override", API_SERVER_NAME)]


def not_the_api_server(details: str | None) -> bool:
    """Whether a failed call's details say the server's certificate is not an API one."""
    text = (details or "").lower()
    return API_SERVER_NAME in text or "peer name" in text or "hostname" in text


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


def parse_subject(subject: str) -> dict[str, str]:
    """Attributes of an RFC 4514 subject string such as "CN=vm-2,O=kat:node"."""
    attrs: dict[str, str] = {}
    part, parts, escaped = "", [], False
    for ch in subject:
        if escaped:
            part += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append(part)
            part = ""
        else:
            part += ch
    parts.append(part)
    for p in parts:
        key, sep, value = p.partition("=")
        if sep:
            attrs.setdefault(key.strip().upper(), value)
    return attrs


@functools.lru_cache(maxsize=4096)
def _identity_from_subject(subject: bytes) -> tuple[str, str]:
    attrs = parse_subject(subject.decode(errors="replace"))
    return attrs.get("CN", ""), attrs.get("O", "")


def peer_identity(context: grpc.aio.ServicerContext) -> tuple[str, str] | None:
    """(common name, role) of the verified client certificate, or None.

    gRPC hands over the verified subject; reading it needs no certificate
    parser, which keeps `cryptography` out of an agent's memory."""
    auth = context.auth_context()
    subjects = auth.get("x509_subject")
    if subjects:
        return _identity_from_subject(subjects[0])
    pems = auth.get("x509_pem_cert")
    if not pems:
        return None
    from internal.security import pki

    return tuple(pki.peer_identity(pems[0]))  # type: ignore[return-value]


@functools.lru_cache(maxsize=4096)
def certificate_sha256(pem: bytes) -> str:
    """Hex SHA-256 of a PEM certificate's DER (the same for any PEM wrapping of it)."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode())).hexdigest()


def peer_certificate_sha256(context: grpc.aio.ServicerContext) -> str:
    pems = context.auth_context().get("x509_pem_cert")
    return certificate_sha256(pems[0]) if pems else ""


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
