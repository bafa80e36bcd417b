"""The Trio shell: open_engine, the Engine, its registry, supervisors, runners and timers."""
