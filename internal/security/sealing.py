"""The cluster secret and what it seals: the CA private keys stored in etcd.

The secret is 32 random bytes made at init, kept by every etcd member in
`<data-dir>/pki/cluster-secret` (0600, 64 hex digits and a newline) and handed to new
members over the join's TLS channel only. CA keys go into etcd sealed with AES-256-GCM
under it, so an etcd read (an etcd client certificate) or a snapshot alone does not give
the CA: restoring a snapshot needs the secret file as well.

Sealed format: b"katseal1" + 12-byte nonce + ciphertext with its 16-byte tag. What a
blob is for (its `purpose`) is authenticated with it, so a sealed etcd CA key cannot be
passed off as the cluster CA key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from internal.host.files import write_atomic

SECRET_BYTES = 32
_MAGIC = b"katseal1"
_NONCE = 12


class SecretError(ValueError):
    """A missing, malformed or wrong cluster secret, worded for the operator."""


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def secret_id(secret: bytes) -> str:
    """A public name of the secret (which one sealed a blob), not usable to open it."""
    return "sha256:" + hashlib.sha256(b"kat-cluster-secret-id:" + secret).hexdigest()[:16]


def encode_secret(secret: bytes) -> bytes:
    return secret.hex().encode() + b"\n"


def decode_secret(text: bytes, source: str = "cluster secret") -> bytes:
    raw = text.strip()
    try:
        secret = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise SecretError(
            f"{source} is not a KAT cluster secret ({SECRET_BYTES * 2} hex digits expected)"
        )
    return secret


def read_secret(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecretError(f"cannot read the cluster secret {path}: {exc.strerror}") from None
    return decode_secret(data, str(path))


def write_secret(path: Path, secret: bytes) -> None:
    write_atomic(Path(path), encode_secret(secret), 0o600)


def ensure_secret(path: Path) -> bytes:
    """The secret at `path`, made (0600) if there is none yet."""
    if Path(path).exists():
        return read_secret(path)
    secret = new_secret()
    write_secret(path, secret)
    return secret


def seal(secret: bytes, plaintext: bytes, purpose: str) -> bytes:
    nonce = os.urandom(_NONCE)
    return _MAGIC + nonce + AESGCM(secret).encrypt(nonce, plaintext, purpose.encode())


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(_MAGIC)


def unseal(secret: bytes, blob: bytes, purpose: str) -> bytes:
    if not is_sealed(blob) or len(blob) < len(_MAGIC) + _NONCE + 16:
        raise SecretError(f"the {purpose} is not sealed data")
    nonce = blob[len(_MAGIC) : len(_MAGIC) + _NONCE]
    try:
        return AESGCM(secret).decrypt(nonce, blob[len(_MAGIC) + _NONCE :], purpose.encode())
    except InvalidTag:
        raise SecretError(
            f"the cluster secret does not open the {purpose} (wrong secret for this cluster?)"
        ) from None
