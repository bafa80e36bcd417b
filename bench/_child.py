"""Child process entry: ``python -m bench._child module:function`` with JSON kwargs on stdin.

Used by :func:`bench._harness.in_subprocess` so that memory-heavy scenarios
measure a fresh interpreter. The result goes to stdout as one JSON line.
"""

from __future__ import annotations

import importlib
import json
import sys


def main() -> None:
    module_name, _, function_name = sys.argv[1].partition(":")
    kwargs = json.loads(sys.stdin.read() or "{}")
    module = importlib.import_module(f"bench.{module_name}")
    result = getattr(module, function_name)(**kwargs)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
