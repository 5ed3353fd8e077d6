"""KAT."""

import internal  # noqa: F401 - gRPC's environment (internal/__init__.py) first
