"""HTTPS certificates for ingress hosts (pure: checks and issuing, no I/O).

An operator supplies a certificate chain and its key for a host (`katcall ingress cert
set`); it is checked here before anything is stored: bounded sizes, PEM that parses, a key
that belongs to the leaf, a leaf that covers the host and is valid now. Without one, the
leader issues a certificate for the host from the cluster CA (role kat:ingress: server
auth only, so it can never authenticate to KAT's own APIs). Listings use `public()`, which
drops the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dh, dsa

from api.v1alpha1 import kat_pb2
from internal.security import pki

MAX_CERT_BYTES = 64 * 1024  # a leaf with a long chain fits easily
MAX_KEY_BYTES = 16 * 1024  # RSA 8192 in PEM is about 6.4 KB
MAX_HOSTS = 256  # per GetIngressCertificates call
ISSUED_VALIDITY_DAYS = 90
# Re-issue a cluster-CA certificate once less than this is left of it.
RENEW_BEFORE = dt.timedelta(days=30)

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


class IngressCertError(ValueError):
    """Input that is refused, with a message naming what is wrong."""


def normalize_host(host: str) -> str:
    """The host as rules name it (lower case, no final dot), or IngressCertError."""
    h = host.strip().lower().rstrip(".")
    if len(h) > 253 or not _HOST.match(h):
        raise IngressCertError(f"host {host[:80]!r} is not a DNS name (or *.domain)")
    return h


def file_stem(host: str) -> str:
    """A file name for the host's PEM (`*.` as `_wildcard.`)."""
    return normalize_host(host).replace("*.", "_wildcard.", 1)


def covers(dns_names: list[str], host: str) -> bool:
    """Whether a certificate for `dns_names` is valid for `host` (RFC 6125 wildcards:
    `*.example.com` covers one label; a `*.` host needs that same wildcard name)."""
    host = host.lower()
    for name in (n.lower().rstrip(".") for n in dns_names):
        if name == host:
            return True
        if name.startswith("*.") and not host.startswith("*."):
            head, _, rest = host.partition(".")
            if head and rest == name[2:]:
                return True
    return False


def _leaf_facts(leaf: x509.Certificate) -> tuple[list[str], str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    return names, leaf.issuer.rfc4514_string()


def describe(host: str, cert_pem: bytes, key_pem: bytes, source: str) -> kat_pb2.IngressKeyPair:
    """The record kept for a host (with its key)."""
    leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    names, issuer = _leaf_facts(leaf)
    out = kat_pb2.IngressCertificate(
        host=host,
        cert_pem=cert_pem,
        sha256=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        dns_names=names,
        issuer=issuer,
        source=source,
    )
    out.not_after.FromDatetime(leaf.not_valid_after_utc)
    out.created.GetCurrentTime()
    return kat_pb2.IngressKeyPair(certificate=out, key_pem=key_pem)


def public(pair: kat_pb2.IngressKeyPair) -> kat_pb2.IngressCertificate:
    """The certificate alone: what listings and `set` answer with."""
    out = kat_pb2.IngressCertificate()
    out.CopyFrom(pair.certificate)
    return out


def check_supplied(
    host: str, cert_pem: bytes, key_pem: bytes, now: dt.datetime | None = None
) -> kat_pb2.IngressKeyPair:
    """The record for an operator's certificate, or IngressCertError saying why not."""
    h = normalize_host(host)
    if not cert_pem or len(cert_pem) > MAX_CERT_BYTES:
        raise IngressCertError(f"the certificate must be 1 to {MAX_CERT_BYTES} bytes of PEM")
    if not key_pem or len(key_pem) > MAX_KEY_BYTES:
        raise IngressCertError(f"the key must be 1 to {MAX_KEY_BYTES} bytes of PEM")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise IngressCertError("the certificate file holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise IngressCertError("the key file holds no unencrypted PEM private key") from None
    if isinstance(key, dsa.DSAPrivateKey | dh.DHPrivateKey):
        raise IngressCertError("DSA/DH keys are not usable for HTTPS; use RSA, EC or Ed25519")
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise IngressCertError("the key does not belong to the (first) certificate")
    names, _ = _leaf_facts(leaf)
    if not covers(names, h):
        raise IngressCertError(
            f"the certificate is for {', '.join(names) or 'no DNS name'}, not {h}"
        )
    when = now or dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= when <= leaf.not_valid_after_utc:
        raise IngressCertError(
            f"the certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%d} "
            f"to {leaf.not_valid_after_utc:%Y-%m-%d}, not now"
        )
    # Stored as given but normalised to one trailing newline each (HAProxy concatenates).
    return describe(h, cert_pem.strip() + b"\n", key_pem.strip() + b"\n", "supplied")


def issue(ca_cert: bytes, ca_key: bytes, host: str) -> kat_pb2.IngressKeyPair:
    """A certificate from the cluster CA for `host` (the CA's certificate appended)."""
    h = normalize_host(host)
    pair = pki.issue_certificate(
        ca_cert,
        ca_key,
        common_name=h,
        role=pki.ROLE_INGRESS,
        dns_names=[h],
        validity_days=ISSUED_VALIDITY_DAYS,
    )
    chain = pair.cert_pem.strip() + b"\n" + ca_cert.strip() + b"\n"
    return describe(h, chain, pair.key_pem.strip() + b"\n", "cluster-ca")


def leaf_pem(chain_pem: bytes) -> bytes:
    """The first certificate of a PEM chain (what the inventory records)."""
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    return leaf.public_bytes(serialization.Encoding.PEM)


def needs_renewal(pair: kat_pb2.IngressKeyPair, now: dt.datetime | None = None) -> bool:
    when = now or dt.datetime.now(dt.UTC)
    return pair.certificate.not_after.ToDatetime(dt.UTC) - when < RENEW_BEFORE
