"""Checks of operator-supplied ingress certificates and certificates the cluster CA issues
for ingress hosts (internal/security/ingress_certs.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from internal.security import ingress_certs as ic
from internal.security import pki


def self_signed(
    names: list[str], *, days: int = 30, start_days: int = -1, rsa_key: bool = False
) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) and its key, as an operator might bring."""
    key = (
        rsa.generate_private_key(65537, 2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "x")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=start_days))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.mark.parametrize("rsa_key", [False, True])
def test_supplied_certificate_is_checked_and_listed_without_key(rsa_key: bool) -> None:
    cert, key = self_signed(["web.kat.local"], rsa_key=rsa_key)
    pair = ic.check_supplied("Web.Kat.Local.", cert, key)
    rec = pair.certificate
    assert rec.host == "web.kat.local" and rec.source == "supplied"
    assert pair.key_pem and list(rec.dns_names) == ["web.kat.local"]
    assert len(rec.sha256) == 64
    pub = ic.public(pair)
    assert "key_pem" not in pub.DESCRIPTOR.fields_by_name  # listings cannot carry a key
    assert pub == rec


@pytest.mark.parametrize(
    ("names", "host", "ok"),
    [
        (["*.kat.local"], "web.kat.local", True),
        (["*.kat.local"], "a.web.kat.local", False),
        (["*.kat.local"], "*.kat.local", True),
        (["web.kat.local"], "*.kat.local", False),
        (["other.kat.local"], "web.kat.local", False),
        ([], "web.kat.local", False),
    ],
)
def test_certificate_must_cover_the_host(names: list[str], host: str, ok: bool) -> None:
    assert ic.covers(names, host) is ok


def test_bad_input_is_refused_with_a_clear_message() -> None:
    cert, key = self_signed(["web.kat.local"])
    other_cert, other_key = self_signed(["web.kat.local"])
    cases = [
        (("web.kat.local", cert, other_key), "does not belong"),
        (("other.kat.local", cert, key), "not other.kat.local"),
        (("web.kat.local", b"junk", key), "no PEM certificate"),
        (("web.kat.local", cert, b"junk"), "no unencrypted PEM private key"),
        (("web.kat.local", cert + b"x" * ic.MAX_CERT_BYTES, key), "bytes of PEM"),
        (("web.kat.local", cert, b""), "bytes of PEM"),
        (("web kat; stats", cert, key), "not a DNS name"),
        (("web.kat.local", *self_signed(["web.kat.local"], days=-1, start_days=-3)), "not now"),
    ]
    for (host, c, k), message in cases:
        with pytest.raises(ic.IngressCertError, match=message):
            ic.check_supplied(host, c, k)


def test_cluster_ca_certificate_is_for_the_host_and_server_only() -> None:
    ca = pki.create_ca()
    pair = ic.issue(ca.cert_pem, ca.key_pem, "web.kat.local")
    rec = pair.certificate
    assert rec.source == "cluster-ca" and rec.host == "web.kat.local"
    leaf_pem = rec.cert_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    pki.verify_certificate(ca.cert_pem, leaf_pem)
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    usages = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == [ExtendedKeyUsageOID.SERVER_AUTH]  # never a client of KAT's APIs
    assert ca.cert_pem.strip() in rec.cert_pem  # the chain HAProxy sends
    again = ic.check_supplied("web.kat.local", rec.cert_pem, pair.key_pem)
    assert again.certificate.sha256 == rec.sha256
    assert not ic.needs_renewal(pair)
    assert ic.needs_renewal(pair, dt.datetime.now(dt.UTC) + dt.timedelta(days=61))
    assert ic.file_stem("*.kat.local") == "_wildcard.kat.local"
    # The inventory records the leaf alone (from kat_agent/leader/ingress_certs.py).
    assert ic.leaf_pem(rec.cert_pem).strip() == leaf_pem.strip()
    info = pki.cert_info(ic.leaf_pem(rec.cert_pem))
    assert (info.common_name, info.role) == ("web.kat.local", pki.ROLE_INGRESS)
