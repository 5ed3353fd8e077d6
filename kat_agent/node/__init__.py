"""The node side of workloads: assignments, containers, health checks, logs."""
