"""Tandem edge_agent (see docs/architecture.md)."""
