"""Cluster PKI: the CA, keys, CSRs, certificates and the identity they carry.

Everything here takes and returns PEM bytes; only `write_private_key`,
`write_certificate` and `ensure_ca` touch files. Keys are ECDSA P-256.

A certificate's identity is its subject: the common name (the node name, or the
admin's name) and the role in the Organization attribute:

    kat:admin  katcall clients         extendedKeyUsage clientAuth
    kat:node   agents (and the leader) serverAuth + clientAuth: the agent also
                                       serves its agent port, the leader its API
    kat:etcd   etcd members and their  serverAuth + clientAuth (under etcd's own CA)
               clients
    kat:monitoring  Prometheus        extendedKeyUsage clientAuth; reads /metrics only
    kat:api    the API server of an    serverAuth only, and the DNS name API_SERVER_NAME
               etcd member             that no other certificate carries: katcall and
                                       agents accept only it as the cluster's API
    kat:join   the leader's join port serverAuth only; its key lives in the member's
               memory and is remade at every start (the CA key never serves TLS)

The signer decides the subject and the SANs; a CSR only proves possession of
its key (its subject and extensions are ignored).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from internal.host.files import write_atomic

ROLE_ADMIN = "kat:admin"
ROLE_NODE = "kat:node"
ROLE_ETCD = "kat:etcd"
# Reads /metrics on every agent and nothing else (no gRPC service accepts it).
ROLE_MONITORING = "kat:monitoring"
# The API server of a member (leader or follower). Clients check for API_SERVER_NAME,
# which the signer puts in these certificates only (internal/security/rpc.py).
ROLE_API = "kat:api"
API_SERVER_NAME = "api.kat.internal"
ROLE_JOIN = "kat:join"
# HTTPS certificates the cluster CA issues for ingress hosts: server only, so such a
# certificate can never authenticate a client to KAT's own APIs.
ROLE_INGRESS = "kat:ingress"

_USAGES: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    ROLE_ADMIN: (ExtendedKeyUsageOID.CLIENT_AUTH,),
    ROLE_NODE: (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    ROLE_ETCD: (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    ROLE_MONITORING: (ExtendedKeyUsageOID.CLIENT_AUTH,),
    ROLE_API: (ExtendedKeyUsageOID.SERVER_AUTH,),
    ROLE_JOIN: (ExtendedKeyUsageOID.SERVER_AUTH,),
    ROLE_INGRESS: (ExtendedKeyUsageOID.SERVER_AUTH,),
}
ROLES = tuple(_USAGES)

# Older leaders served the join port with the CA certificate itself, under this name.
CA_SERVER_NAME = "kat-ca"
# The name in the join port's own serving certificate (role kat:join).
JOIN_SERVER_NAME = "kat-join"

CA_VALIDITY_DAYS = 3650
CERT_VALIDITY_DAYS = 365
# Tolerate a little clock skew between nodes for freshly issued certificates; a tenth
# of the lifetime at most (short test lifetimes would otherwise be mostly in the past).
_BACKDATE = dt.timedelta(minutes=5)


def backdate(lifetime: dt.timedelta) -> dt.timedelta:
    return min(_BACKDATE, lifetime / 10)


class CertificateError(ValueError):
    """A certificate, key or CSR that cannot be used, with the reason."""


@dataclass(frozen=True)
class CertAndKey:
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # never show the key, also not by accident in a log
        return f"CertAndKey(cert_pem=<{len(self.cert_pem)} bytes>, key_pem=<redacted>)"


class PeerIdentity(NamedTuple):
    common_name: str
    role: str


@dataclass(frozen=True)
class CertInfo:
    serial: str  # hex
    common_name: str
    role: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool
    server_auth: bool
    client_auth: bool


# ---------------------------------------------------------------- keys and CSRs


def generate_private_key() -> bytes:
    """A new ECDSA P-256 private key, PEM (PKCS#8, unencrypted)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not a usable private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("private key is not an EC key")
    return key


def create_csr(key_pem: bytes, common_name: str = "") -> bytes:
    """A CSR signed with `key_pem` (which stays where it was made)."""
    key = _load_key(key_pem)
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(names))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a CSR and check its self-signature; ValueError (CertificateError) if bad."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise CertificateError("CSR signature does not match its public key")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CertificateError("CSR key must be EC or RSA")
    return csr


# ---------------------------------------------------------------- CA and signing


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(common_name: str = "kat-ca", *, validity_days: int = CA_VALIDITY_DAYS) -> CertAndKey:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key_pem = generate_private_key()
    key = _load_key(key_pem)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_SERVER_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertAndKey(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from None


def _san(dns_names: Iterable[str], ip_addresses: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for d in dict.fromkeys(n for n in dns_names if n):
        names.append(x509.DNSName(d))
    for ip in dict.fromkeys(i for i in ip_addresses if i):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CertificateError(f"not an IP address: {ip!r}") from None
    return names


def sign_csr(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    csr_pem: bytes,
    *,
    common_name: str,
    role: str,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    validity_days: int = CERT_VALIDITY_DAYS,
    lifetime: dt.timedelta | None = None,
) -> bytes:
    """Sign the CSR's public key as the CA. Subject (CN, role) and SANs are the
    caller's choice; whatever the CSR asks for is ignored. Returns the cert PEM.
    `lifetime`, when given, replaces `validity_days`."""
    if role not in _USAGES:
        raise CertificateError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
    if not common_name:
        raise CertificateError("a certificate needs a common name")
    dns_names = list(dns_names)
    if API_SERVER_NAME in dns_names and role != ROLE_API:
        raise CertificateError(f"only {ROLE_API} certificates may name {API_SERVER_NAME}")
    csr = load_csr(csr_pem)
    ca_cert = _load_cert(ca_cert_pem)
    ca_key = _load_key(ca_key_pem)
    if ca_cert.public_key() != ca_key.public_key():
        raise CertificateError("CA key does not belong to the CA certificate")
    now = _now()
    life = lifetime if lifetime is not None else dt.timedelta(days=validity_days)
    not_after = min(now + life, ca_cert.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    public_key = csr.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate(life))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA keys exchange the TLS secret by encryption; EC keys do not.
                key_encipherment=not isinstance(public_key, ec.EllipticCurvePublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(_USAGES[role])), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    sans = _san(dns_names, ip_addresses)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    common_name: str,
    role: str,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    validity_days: int = CERT_VALIDITY_DAYS,
    lifetime: dt.timedelta | None = None,
) -> CertAndKey:
    """A new key and its certificate, for a key used on this machine (the admin
    certificate written by init, the init node's own certificates)."""
    key_pem = generate_private_key()
    cert_pem = sign_csr(
        ca_cert_pem,
        ca_key_pem,
        create_csr(key_pem),
        common_name=common_name,
        role=role,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        validity_days=validity_days,
        lifetime=lifetime,
    )
    return CertAndKey(cert_pem, key_pem)


def serving_sans(
    node_name: str,
    advertise_ip: str,
    extra_dns: Iterable[str] = (),
    extra_ips: Iterable[str] = (),
) -> tuple[list[str], list[str]]:
    """(DNS names, IPs) a node's serving certificate carries: its name,
    localhost, its advertise IP and 127.0.0.1 (the local agent and etcd probes)."""
    dns = [node_name, "localhost", *extra_dns]
    ips = [advertise_ip, "127.0.0.1", *extra_ips]
    return list(dict.fromkeys(d for d in dns if d)), list(dict.fromkeys(i for i in ips if i))


def issue_serving_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    node_name: str,
    advertise_ip: str,
    role: str = ROLE_NODE,
    extra_dns: Iterable[str] = (),
    extra_ips: Iterable[str] = (),
    validity_days: int = CERT_VALIDITY_DAYS,
) -> CertAndKey:
    """Key and certificate for a server (the leader's API, an etcd member)
    named `node_name` and reachable at `advertise_ip`."""
    dns, ips = serving_sans(node_name, advertise_ip, extra_dns, extra_ips)
    return issue_certificate(
        ca_cert_pem,
        ca_key_pem,
        common_name=node_name,
        role=role,
        dns_names=dns,
        ip_addresses=ips,
        validity_days=validity_days,
    )


# ---------------------------------------------------------------- reading certificates


def ca_hash(ca_pem: bytes) -> str:
    """ "sha256:<hex>" of the certificate's DER, as carried in join tokens."""
    der = _load_cert(ca_pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def ca_hash_matches(ca_pem: bytes, expected: str) -> bool:
    """Whether `ca_pem` is the CA pinned by `expected` (with or without "sha256:")."""
    want = expected.strip().lower().removeprefix("sha256:")
    have = ca_hash(ca_pem).removeprefix("sha256:")
    return hmac.compare_digest(have, want)


def _identity(cert: x509.Certificate) -> PeerIdentity:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return PeerIdentity(str(cn[0].value) if cn else "", str(org[0].value) if org else "")


def peer_identity(cert_pem: bytes) -> PeerIdentity:
    """(common name, role) of a certificate; role is "" when it has none."""
    return _identity(_load_cert(cert_pem))


def identity_from_auth_context(auth_context: Mapping[str, Sequence[bytes]]) -> PeerIdentity | None:
    """The peer's identity from grpc.aio `context.auth_context()`, or None
    without a (verified) client certificate."""
    pems = auth_context.get("x509_pem_cert")
    if not pems:
        return None
    return peer_identity(pems[0])


def cert_info(cert_pem: bytes) -> CertInfo:
    cert = _load_cert(cert_pem)
    cn, role = _identity(cert)
    dns: list[str] = []
    ips: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        serial=format(cert.serial_number, "x"),
        common_name=cn,
        role=role,
        dns_names=tuple(dns),
        ip_addresses=tuple(ips),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        server_auth=ExtendedKeyUsageOID.SERVER_AUTH in usages,
        client_auth=ExtendedKeyUsageOID.CLIENT_AUTH in usages,
    )


def verify_certificate(
    ca_cert_pem: bytes, cert_pem: bytes, *, at: dt.datetime | None = None
) -> None:
    """Raise CertificateError unless `cert_pem` was issued by this CA and is
    valid at `at` (default now)."""
    ca = _load_cert(ca_cert_pem)
    cert = _load_cert(cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateError(
            f"certificate was not issued by this CA: {exc or 'bad signature'}"
        ) from None
    when = at or _now()
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise CertificateError(
            f"certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not at {when:%Y-%m-%d %H:%M}"
        )


def key_matches_certificate(cert_pem: bytes, key_pem: bytes) -> bool:
    return _load_cert(cert_pem).public_key() == _load_key(key_pem).public_key()


# ---------------------------------------------------------------- files


def write_private_key(path: Path, key_pem: bytes) -> None:
    """Write a private key, mode 0600."""
    write_atomic(Path(path), key_pem, 0o600)


def write_certificate(path: Path, cert_pem: bytes) -> None:
    """Write a certificate (or CSR), mode 0644."""
    write_atomic(Path(path), cert_pem, 0o644)


def write_pair(cert_path: Path, key_path: Path, pair: CertAndKey) -> None:
    """Key first: a certificate on disk always has its key next to it."""
    write_private_key(key_path, pair.key_pem)
    write_certificate(cert_path, pair.cert_pem)


def read_pair(cert_path: Path, key_path: Path) -> CertAndKey:
    return CertAndKey(Path(cert_path).read_bytes(), Path(key_path).read_bytes())


def ensure_ca(cert_path: Path, key_path: Path, common_name: str = "kat-ca") -> CertAndKey:
    """Load the CA at these paths, or create and write one if neither exists
    (so that running init again resumes instead of replacing the CA)."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert and have_key:
        pair = read_pair(cert_path, key_path)
        if not key_matches_certificate(pair.cert_pem, pair.key_pem):
            raise CertificateError(f"{key_path} is not the key of {cert_path}")
        return pair
    if have_cert or have_key:
        present = cert_path if have_cert else key_path
        raise CertificateError(f"found {present} without its pair; refusing to replace a CA half")
    pair = create_ca(common_name)
    write_pair(cert_path, key_path, pair)
    return pair
