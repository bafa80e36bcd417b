"""Helpers for testing workflows: virtual time, a one-call runner, hypothesis strategies."""

__all__: list[str] = []
