"""Optional integrations with other libraries.

Each submodule imports its third-party library itself, so ``import hephaestus``
never needs them; import the one you use, e.g.
``from hephaestus.contrib.otel import OTelHandler`` (``pip install
"hephaestus-trio[otel]"``).
"""
