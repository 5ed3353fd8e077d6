"""A certificate and its key on disk, re-read when they change (renewal without restart).

Servers serve through `server_credentials` (gRPC asks on every new handshake, so the
renewed certificate is used from the next connection on); clients compare `version`
and rebuild their channels when it moved. A renewal writes the key first and the
certificate second, each atomically: in between, the pair on disk does not match and
the previous pair stays in use."""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

import grpc


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def pair_matches(cert_path: Path, key_path: Path) -> bool:
    """Whether the key on disk belongs to the certificate on disk (no parser needed)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError):
        return False
    return True


class KeyPairFile:
    """The current (certificate, key) at two paths; thread-safe (gRPC's fetcher runs on
    its own threads)."""

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self._lock = threading.Lock()
        self._stamps: tuple[object, object] | None = None
        self.cert, self.key = self.cert_path.read_bytes(), self.key_path.read_bytes()
        self.version = 0
        self._stamps = self._read_stamps()

    def _read_stamps(self) -> tuple[object, object] | None:
        try:
            return (_stamp(self.cert_path), _stamp(self.key_path))
        except OSError:
            return None

    def refresh(self) -> bool:
        """Re-read the files if they changed and match; True when a new pair was taken."""
        with self._lock:
            stamps = self._read_stamps()
            if stamps is None or stamps == self._stamps:
                return False
            if not pair_matches(self.cert_path, self.key_path):
                return False  # half-written renewal: keep the previous pair
            try:
                cert, key = self.cert_path.read_bytes(), self.key_path.read_bytes()
            except OSError:
                return False
            self._stamps = stamps
            if (cert, key) == (self.cert, self.key):
                return False
            self.cert, self.key = cert, key
            self.version += 1
            return True

    def current(self) -> tuple[bytes, bytes]:
        self.refresh()
        return self.cert, self.key

    def server_credentials(
        self, ca: bytes, *, require_client_auth: bool = True
    ) -> grpc.ServerCredentials:
        """mTLS (or TLS) server credentials that follow the files."""

        def config(cert: bytes, key: bytes) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

        initial = config(self.cert, self.key)
        # Several users share one KeyPairFile: each follows `version`, not refresh()'s answer.
        served = [self.version]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC for each new connection: None keeps the current one.
            try:
                self.refresh()
                if self.version == served[0]:
                    return None
                served[0] = self.version
                return config(self.cert, self.key)
            except Exception:  # noqa: BLE001 - a fetcher must not raise into gRPC
                return None

        return grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=require_client_auth
        )
