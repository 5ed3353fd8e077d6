"""Join tokens: format, creation and verification (pure logic, no I/O).

A join token is what an operator copies to a new node:

    KAT1.<sha256 of the CA certificate, hex>.<join port>.<id>.<secret>

The CA hash lets the joining agent pin the cluster CA before trusting anything
(no trust on first use); the join port tells it where the leader accepts
certificate-less TLS for the Join call. Only a SHA-256 of the secret is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from api.v1alpha1 import kat_pb2

PREFIX = "KAT1"
DEFAULT_TTL = timedelta(hours=24)
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_CREDENTIAL_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{32})$")
# What a joining node is told for an unknown id and for a wrong secret alike, so
# that the answer does not tell which token ids exist.
REFUSED = "invalid join token"
_TOKEN_RE = re.compile(
    r"^KAT1\.(?P<ca>[0-9a-f]{64})\.(?P<port>[0-9]{1,5})\.(?P<id>[a-z0-9]{6})\.(?P<secret>[a-z0-9]{32})$"
)


class TokenError(ValueError):
    """A token that cannot be used, with the reason in words."""


@dataclass(frozen=True)
class ParsedToken:
    ca_hash: str  # hex SHA-256 of the CA certificate (DER)
    join_port: int
    token_id: str
    secret: str

    @property
    def credential(self) -> str:
        """The part sent to the leader: id and secret, never the CA hash."""
        return f"{self.token_id}.{self.secret}"


def _random(n: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    ca_hash: str,
    join_port: int,
    *,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
    max_uses: int = 0,
    description: str = "",
    etcd_member: bool = False,
) -> tuple[kat_pb2.JoinToken, str]:
    """A new token record (to store) and the token string (to show once)."""
    if ttl <= timedelta(0):
        raise TokenError("token ttl must be positive")
    token_id, secret = _random(6), _random(32)
    record = kat_pb2.JoinToken(
        id=token_id,
        secret_sha256=secret_digest(secret),
        max_uses=max_uses,
        description=description,
        etcd_member=etcd_member,
    )
    record.created.FromDatetime(now)
    record.expires.FromDatetime(now + ttl)
    ca = ca_hash.removeprefix("sha256:")
    return record, f"{PREFIX}.{ca}.{join_port}.{token_id}.{secret}"


def parse(token: str) -> ParsedToken:
    m = _TOKEN_RE.match(token.strip())
    if not m:
        raise TokenError(
            "malformed join token (expected KAT1.<ca-hash>.<port>.<id>.<secret>, "
            "as printed by `kat-agent init` or `katcall token create`)"
        )
    return ParsedToken(m["ca"], int(m["port"]), m["id"], m["secret"])


def parse_credential(credential: str) -> tuple[str, str]:
    """(id, secret) of a credential in the exact format new_token makes; checked
    before anything else so that nothing is looked up or kept for a made-up id."""
    m = _CREDENTIAL_RE.match(credential) if len(credential) == 39 else None
    if not m:
        raise TokenError(REFUSED)
    return m[1], m[2]


_NO_DIGEST = "0" * 64


def check(record: kat_pb2.JoinToken | None, secret: str, *, now: datetime) -> None:
    """Raise TokenError unless the token may be used once more at `now`."""
    # An unknown id costs the same digest and comparison as a wrong secret.
    expected = record.secret_sha256 if record is not None else _NO_DIGEST
    if not hmac.compare_digest(expected, secret_digest(secret)) or record is None:
        raise TokenError(REFUSED)
    if record.revoked:
        raise TokenError(f"join token {record.id} has been revoked")
    if record.expires.ToDatetime(tzinfo=UTC) <= now:
        raise TokenError(f"join token {record.id} expired at {record.expires.ToJsonString()}")
    if record.max_uses and record.uses >= record.max_uses:
        raise TokenError(f"join token {record.id} has been used {record.uses} times already")
