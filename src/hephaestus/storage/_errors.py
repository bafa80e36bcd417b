"""Errors of the storage layer that are not part of the public API."""

from __future__ import annotations


class NotAStore(ValueError):
    """The path is no hephaestus store (or not one of a kind this release reads).

    The message names the path and says what was found there.
    """
