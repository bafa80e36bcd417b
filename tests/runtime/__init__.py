"""Tests of the Trio runtime: open_engine, Engine, runners, supervision and recovery."""
