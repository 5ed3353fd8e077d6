"""The node's WireGuard key pair: made on the node, private key 0600 in the data dir
(wg's own format: base64 of the 32 raw bytes), never sent anywhere; the public key goes
into the join request and the node record."""

from __future__ import annotations

import base64
from pathlib import Path

from internal.host.files import write_private


def _public_of(private_b64: str) -> str:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = base64.b64decode(private_b64, validate=True)
    if len(raw) != 32:
        raise ValueError("a WireGuard private key is 32 bytes")
    pub = X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def ensure_keypair(path: Path) -> str:
    """Load the private key at `path`, or create it; returns the public key (base64)."""
    try:
        private = path.read_text().strip()
    except FileNotFoundError:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        raw = X25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        private = base64.b64encode(raw).decode()
        write_private(path, (private + "\n").encode())
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return _public_of(private)
