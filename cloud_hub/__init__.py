"""Tandem cloud_hub (see docs/architecture.md)."""
