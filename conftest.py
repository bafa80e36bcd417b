"""Shared pytest configuration: hypothesis profiles.

``HYPOTHESIS_PROFILE=ci`` (what nox sets) keeps the whole suite well inside CI's
time budget on two cores; ``dev`` is the quick default.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# -- PostgreSQL for the tests of PostgresStorage (see hephaestus.testing._pg_cluster) ----------

import itertools  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from hephaestus.testing import _pg_cluster  # noqa: E402

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """An admin DSN for the session: ``HEPHAESTUS_PG_DSN`` or a throwaway cluster.

    Skips the test when there is neither (or psycopg is missing), and fails it
    instead when ``HEPHAESTUS_REQUIRE_PG=1`` (what ``.ci/run`` sets).
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing = "psycopg is not installed (pip install 'hephaestus-trio[postgres]')"
    else:
        missing = ""
    if missing:
        if _pg_cluster.required():
            pytest.fail(f"HEPHAESTUS_REQUIRE_PG=1 but {missing}")
        pytest.skip(missing)
    with _pg_cluster.server() as dsn:
        if dsn is None:
            reason = "no PostgreSQL: set HEPHAESTUS_PG_DSN or install its binaries (initdb)"
            if _pg_cluster.required():
                pytest.fail(f"HEPHAESTUS_REQUIRE_PG=1 but {reason}")
            pytest.skip(reason)
        yield dsn


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """A DSN of a new, empty database of its own for this test, dropped afterwards."""
    name = f"hx_test_{os.getpid()}_{next(_databases)}"
    dsn = _pg_cluster.create_database(pg_server, name)
    try:
        yield dsn
    finally:
        _pg_cluster.drop_database(pg_server, name)
