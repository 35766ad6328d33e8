"""Tandem edge agent: serve a compiled model locally over ZeroMQ, fall back to the hub when unsure.

Public names: `Agent` (the daemon, in-process), `AgentConfig`, `AgentClient` and
`AsyncAgentClient` (the local API's clients). Everything else is internal.
"""

from tandem.edge_agent.agent import Agent
from tandem.edge_agent.client import AgentAnswer, AgentClient, AsyncAgentClient
from tandem.edge_agent.config import AgentConfig
from tandem.edge_agent.errors import AgentError

__all__ = ["Agent", "AgentAnswer", "AgentClient", "AgentConfig", "AgentError", "AsyncAgentClient"]
