"""Why katcall cannot talk to an endpoint, in one sentence that names the cause.

gRPC only says "failed to connect to all addresses" (and logs the TLS reason on stderr);
when every endpoint fails that way katcall connects once more itself, with Python's ssl
and the same CA, certificate and key, and words what it finds: nothing listening, no
answer, the server's certificate not accepted by the context's CA (and which certificate
that is), or katcall's own certificate expired or refused by the server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from internal.host.files import write_private
from internal.security import clientconfig, rpc

CONNECT_TIMEOUT = 3.0
HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _describe_cert(der_or_pem: bytes) -> str:
    try:
        cert = (
            x509.load_pem_x509_certificate(der_or_pem)
            if der_or_pem.startswith(b"-----")
            else x509.load_der_x509_certificate(der_or_pem)
        )
    except ValueError:
        return "an unreadable certificate"
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    return (
        f"{cert.subject.rfc4514_string() or '(no subject)'}, issued by "
        f"{cert.issuer.rfc4514_string() or '(no issuer)'}, valid until {until}"
    )


def own_certificate_problem(ctx: clientconfig.Context) -> str | None:
    """katcall's client certificate expired or not yet valid, checked locally."""
    try:
        cert = x509.load_pem_x509_certificate(ctx.cert)
    except ValueError:
        return f"the client certificate in context {ctx.name!r} is not a PEM certificate"
    now = datetime.now(UTC)
    if now > cert.not_valid_after_utc:
        day = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
        return f"katcall's client certificate in context {ctx.name!r} expired on {day}"
    if now < cert.not_valid_before_utc:
        day = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC")
        return f"katcall's client certificate in context {ctx.name!r} is not valid before {day}"
    return None


@contextlib.contextmanager
def _ssl_context(ctx: clientconfig.Context) -> Iterator[ssl.SSLContext]:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.load_verify_locations(cadata=ctx.ca.decode())
    tls.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="katcall-") as tmp:  # 0700; the key file 0600
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        write_private(cert, ctx.cert)
        write_private(key, ctx.key)
        tls.load_cert_chain(os.fspath(cert), os.fspath(key))
        yield tls


def _server_certificate(host: str, port: int) -> bytes | None:
    """The server's certificate without verifying it (only to name it in a message)."""
    loose = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as raw:
            with loose.wrap_socket(raw, server_hostname=host) as tls:
                return tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def endpoint_problem(ctx: clientconfig.Context, endpoint: str) -> str | None:
    """What is wrong with talking to `endpoint`, or None when nothing could be found."""
    try:
        host, port = _split(endpoint)
    except ValueError:
        return f"{endpoint!r} is not host:port"
    try:
        raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except ConnectionRefusedError:
        return f"nothing listens at {endpoint} (connection refused): is kat-agent running there?"
    except TimeoutError:
        return f"{endpoint} does not answer (no reply within {CONNECT_TIMEOUT:g}s)"
    except OSError as exc:
        return f"cannot connect to {endpoint}: {exc.strerror or exc}"
    try:
        # The name every API client checks (not the address): see rpc.API_SERVER_NAME.
        api_name = rpc.API_SERVER_NAME
        with _ssl_context(ctx) as tls, raw, tls.wrap_socket(raw, server_hostname=api_name) as conn:
            conn.settimeout(CONNECT_TIMEOUT)
            # A TLS 1.3 server refuses a client certificate after the handshake, by an alert
            # or by closing at once; one that accepts it sends its HTTP/2 settings.
            first = b"?"
            with contextlib.suppress(TimeoutError, socket.timeout):
                first = conn.recv(1)
            if not first:
                return _refused(endpoint, ctx, "it closed the connection after the handshake")
    except ssl.SSLCertVerificationError as exc:
        served = _server_certificate(host, port)
        what = _describe_cert(served) if served else "not readable"
        if exc.verify_code == HOSTNAME_MISMATCH:
            return (
                f"TLS verification of {endpoint} failed: it is not a KAT API server: its "
                f"certificate ({what}) is from the cluster's CA but is not an API server "
                f"certificate (no {rpc.API_SERVER_NAME}); a node certificate cannot serve "
                "the API, refusing to talk to it"
            )
        return (
            f"TLS verification of {endpoint} failed: its certificate ({what}) is not accepted "
            f"by the CA of context {ctx.name!r}: {exc.verify_message}"
        )
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "ALERT" in reason.upper():
            return _refused(endpoint, ctx, reason.lower().replace("_", " "))
        return f"TLS with {endpoint} failed: {reason}"
    except (OSError, ValueError) as exc:
        return f"TLS with {endpoint} failed: {exc}"
    return None


def _refused(endpoint: str, ctx: clientconfig.Context, how: str) -> str:
    return (
        f"{endpoint} refused katcall's client certificate ({_describe_cert(ctx.cert)}): {how}; "
        f"is it signed by this cluster's CA? (context {ctx.name!r})"
    )


def unreachable(ctx: clientconfig.Context, endpoints: list[str]) -> tuple[str | None, bool]:
    """One sentence for a cluster none of whose endpoints could be used (or None), and
    whether the cause lasts: certificates, or nothing listening at any endpoint (a failover
    leaves some member answering "not the leader" meanwhile), so waiting cannot help."""
    own = own_certificate_problem(ctx)
    if own is not None:
        return own, True
    problems = [p for p in (endpoint_problem(ctx, e) for e in endpoints) if p]
    if not problems:
        return None, False
    lasting = len(problems) == len(endpoints) and all(
        p.startswith(("TLS ", "nothing listens")) or "client certificate" in p for p in problems
    )
    if len(problems) == 1:
        return problems[0], lasting
    return "cannot reach the cluster: " + "; ".join(problems), lasting
