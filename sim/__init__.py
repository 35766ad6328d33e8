"""Tandem sim (see docs/architecture.md)."""
