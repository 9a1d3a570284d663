"""Declarative configuration: channels/*.yaml, routes.yaml, pfi.yaml, validated in one pass."""
