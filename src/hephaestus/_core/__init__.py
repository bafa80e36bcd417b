"""The pure core: steps, workflows, the instance model and the engine's transitions.

Nothing here imports trio or does I/O (``tests/test_core_purity.py`` checks it).
"""
