#!/usr/bin/env bash
# Regenerates the Python protobuf and gRPC code from api/v1alpha1/kat.proto.
# The output is committed, so installing KAT needs no code generation.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  api/v1alpha1/kat.proto
