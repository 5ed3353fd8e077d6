"""KAT's API: the proto (the schema) and its generated code."""

import internal  # noqa: F401 - gRPC's environment (internal/__init__.py) first
