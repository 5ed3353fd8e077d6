"""Metrics, audit and log plumbing shared by the leader and the agents."""
