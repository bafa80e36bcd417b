"""The Trio shell: open_engine, the Engine, runners, the registry and timers."""
