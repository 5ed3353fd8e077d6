"""KAT's internals: manifests, pure decisions, state, security, host and observability.

Imported before grpc by every entry point (api, kat_agent and katcall import this package
first), so the gRPC environment below is set before gRPC starts."""

import os

# KAT forks only to exec (subprocess: etcd, Podman, nft, ...). gRPC's fork handlers are
# for processes that fork and go on using gRPC; with them on, a child forked while other
# threads call into gRPC can abort before its exec (seen: etcd "exited with status -6"
# after "epoll_wait error: Bad file descriptor"). gRPC's advice for fork+exec: off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
