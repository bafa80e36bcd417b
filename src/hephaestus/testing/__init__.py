"""Helpers for testing workflows: virtual time, a one-call runner, hypothesis strategies."""

from ._clock import VirtualClock as VirtualClock

__all__ = ["VirtualClock"]
