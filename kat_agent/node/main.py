"""Entry point of the node runtime, started by every kat-agent."""

from __future__ import annotations

import asyncio

from api.v1alpha1 import kat_pb2
from kat_agent.agent import Agent
from kat_agent.datadir import DataDir, NodeIdentity


async def run_node(
    dd: DataDir, identity: NodeIdentity, agent: Agent, config: kat_pb2.ClusterConfiguration
) -> None:
    """Placeholder until the node runtime lands: idles."""
    await asyncio.Event().wait()
