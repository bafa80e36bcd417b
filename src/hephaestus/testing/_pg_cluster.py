"""A throwaway PostgreSQL cluster for tests and benchmarks (no server to install or configure).

``find_server()`` answers where a database for tests comes from, in this order:

1. ``HEPHAESTUS_PG_DSN``: a server someone runs (each test gets its own
   database on it, created from that DSN and dropped afterwards);
2. PostgreSQL's binaries (``initdb``, ``pg_ctl``: ``PATH``, then Debian's
   ``/usr/lib/postgresql/*/bin``): a new cluster in a temporary directory,
   listening only on a unix socket there, stopped and removed at the end;
3. neither: ``None`` (tests skip, unless ``HEPHAESTUS_REQUIRE_PG=1``).

``initdb`` refuses to run as root, so as root the cluster is made and run as
the ``postgres`` OS user (``runuser -u postgres --``), which is given the
temporary directory. A cluster for tests runs with ``fsync=off`` (a crash of
the machine loses it anyway); ``durable=True`` (benchmarks) keeps PostgreSQL's
defaults.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from typing import Final, final

DSN_VARIABLE: Final = "HEPHAESTUS_PG_DSN"
REQUIRE_VARIABLE: Final = "HEPHAESTUS_REQUIRE_PG"
_PORT: Final = 5432
_OS_USER: Final = "postgres"


def binaries() -> str | None:
    """Return the directory holding ``initdb`` and ``pg_ctl``, or None if there is none."""
    found = shutil.which("initdb")
    if found is not None and shutil.which("pg_ctl") is not None:
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0,
    )
    return os.path.dirname(candidates[-1]) if candidates else None


def required() -> bool:
    """True when ``HEPHAESTUS_REQUIRE_PG=1``: a missing server is a failure, not a skip."""
    return os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0")


def with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` (a URL or ``key=value`` string) naming ``database`` instead of its own."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urllib.parse.urlsplit(dsn)
        return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(database)))
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, dbname=database)


@final
class Cluster:
    """A running PostgreSQL cluster this process started; ``stop()`` removes it.

    ``dsn`` connects to its ``postgres`` database as the ``postgres`` role
    (trust authentication, unix socket only).
    """

    def __init__(self, root: str, bindir: str, *, as_user: bool) -> None:
        self.root = root
        self.bindir = bindir
        self.data = os.path.join(root, "data")
        self.socket_dir = os.path.join(root, "run")
        self._as_user = as_user
        query = urllib.parse.urlencode({"host": self.socket_dir, "port": _PORT})
        self.dsn = f"postgresql://{_OS_USER}@/postgres?{query}"

    def _run(self, *argv: str) -> None:
        command = [os.path.join(self.bindir, argv[0]), *argv[1:]]
        if self._as_user:
            command = ["runuser", "-u", _OS_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )

    def start(self, *, durable: bool) -> None:
        """initdb and start the server; raises RuntimeError with PostgreSQL's message."""
        os.makedirs(self.socket_dir)
        if self._as_user:
            shutil.chown(self.root, user=_OS_USER)
            shutil.chown(self.socket_dir, user=_OS_USER)
        self._run("initdb", "-N", "-A", "trust", "-U", _OS_USER, "-E", "UTF8", "--no-locale",
                  "-D", self.data)  # fmt: skip
        settings = [
            "-k", self.socket_dir, "-p", str(_PORT), "-c", "listen_addresses=",
            "-c", "max_connections=200", "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        if not durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off"]  # fmt: skip
        log = os.path.join(self.root, "server.log")
        self._run("pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "60",
                  "-o", " ".join(settings), "start")  # fmt: skip

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, durable: bool = False, bindir: str | None = None) -> Cluster:
    """Create and start a cluster in a new temporary directory.

    Raises:
        FileNotFoundError: no PostgreSQL binaries were found.
        RuntimeError: initdb or pg_ctl failed (the message is theirs).
    """
    bindir = bindir or binaries()
    if bindir is None:
        raise FileNotFoundError(
            "no PostgreSQL binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql/*/bin: "
            "install PostgreSQL (Debian: apt-get install postgresql) or set HEPHAESTUS_PG_DSN"
        )
    root = tempfile.mkdtemp(prefix="hephaestus-pg-")
    os.chmod(root, 0o755)
    cluster = Cluster(root, bindir, as_user=os.geteuid() == 0)
    try:
        cluster.start(durable=durable)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def server(*, durable: bool = False) -> Iterator[str | None]:
    """Yield an admin DSN: ``HEPHAESTUS_PG_DSN``, else a throwaway cluster's, else None.

    Raises:
        RuntimeError: a cluster could not be started (binaries present but failing).
    """
    given = os.environ.get(DSN_VARIABLE)
    if given:
        yield given
        return
    if binaries() is None:
        yield None
        return
    cluster = start_cluster(durable=durable)
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` (dropping one of that name first); return its DSN."""
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name``, disconnecting whoever is still on it."""
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
