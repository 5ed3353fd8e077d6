"""katcall, KAT's command line."""

import os

import internal  # noqa: F401 - gRPC's environment (internal/__init__.py) first

# gRPC core logs TLS handshake failures on stderr by itself; katcall says what went wrong
# in one sentence of its own (katcall/diagnose.py). Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
