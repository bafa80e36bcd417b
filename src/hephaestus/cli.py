"""The `hephaestus` command line (in progress)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    print("hephaestus: not built yet", file=sys.stderr)
    return 1
