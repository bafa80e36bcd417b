"""Development tasks: `nox` runs the default sessions below; `nox -s bench` on demand.

Default: tests, property_tests, lint, typecheck (src, tests, property_tests, bench,
noxfile.py, conftest.py) and docs.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "property_tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the unit, crash and integration tests under tests/."""
    session.install("-e", ".[test,rich,otel]")
    session.run("pytest", "tests", *session.posargs, env={"HYPOTHESIS_PROFILE": "ci"})


@nox.session(python=PYTHON)
def property_tests(session: nox.Session) -> None:
    """Run the hypothesis property tests under property_tests/ (the ci profile's example count)."""
    session.install("-e", ".[test]")
    session.run("pytest", "property_tests", *session.posargs, env={"HYPOTHESIS_PROFILE": "ci"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("ruff>=0.6")
    paths = ["src", "tests", "property_tests", "bench", "noxfile.py", "conftest.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package, the tests, the benchmarks and this file with mypy --strict.

    The paths are pyproject.toml's ``[tool.mypy] files``; nox is installed for noxfile.py.
    """
    session.install("-e", ".[test,rich,otel]", "mypy>=1.10", "nox")
    session.run("mypy", "--strict", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs --strict."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmark suite and write docs/benchmarks.md (`-- --smoke` for a quick run)."""
    session.install("-e", ".[rich]")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session(python=PYTHON)
def bench_peers(session: nox.Session) -> None:
    """Compare durable 3-step workflows with DBOS on SQLite and on PostgreSQL (own virtualenv)."""
    session.install("-e", ".[postgres]", "dbos")
    session.run("python", "-m", "bench.peers", *session.posargs)
