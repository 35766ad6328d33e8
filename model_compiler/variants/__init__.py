"""Variant builders, one module per runtime."""
