"""A throwaway PostgreSQL cluster for the hub's storage tests, and the switch that puts hubs on it.

`postgres_cluster` (session) runs Debian's postgresql binaries (/usr/lib/postgresql/*/bin:
initdb, pg_ctl) in a temporary folder on a free 127.0.0.1 port, with fsync off (the data is
thrown away). initdb refuses to run as root, so as root the cluster runs as the `postgres`
user the package creates (runuser). `pg_url` is a fresh database per test.

TANDEM_TEST_DATABASE=postgresql (the Makefile's second pass over the hub suites) makes every
`Hub` a test builds keep its state in the cluster: one database per data dir, so a hub
restarted on the same dir finds its data again, dropped when the test ends.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dependencies import missing

DATABASE_ENV = "TANDEM_TEST_DATABASE"  # "postgresql": hubs in tests use the throwaway cluster
BACKENDS = ("sqlite", "postgresql")
_names = itertools.count(1)


def hub_test_backend() -> str:
    """Which backend hubs built by tests use: sqlite (default) or postgresql."""
    value = os.environ.get(DATABASE_ENV, "sqlite") or "sqlite"
    if value not in BACKENDS:
        raise pytest.UsageError(f"{DATABASE_ENV}={value!r}: use one of {', '.join(BACKENDS)}")
    return value


def postgres_bindir() -> Path | None:
    """The newest installed server's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """initdb + pg_ctl start in a temporary folder; `stop` removes it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="tandem-pg-"))
        from telemetry_fixtures import free_port  # imported here: that plugin registers after this one

        self.port = free_port()
        self.user = "tandem"
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the package's postgres user
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")

    def start(self, max_connections: int = 400) -> "PostgresCluster":
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync"
        )
        self.options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections={max_connections} -c shared_buffers=32MB"
        )
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", self.options, "-l", str(self.root / "log"), "-w",
            "-t", "60", "start",
        )  # fmt: skip

    def kill_postmaster(self) -> int:
        """SIGKILL the server's postmaster (a crash: its backends end when they notice); its pid."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        return pid

    def start_again(self, timeout_s: float = 30.0) -> None:
        """pg_ctl start after a crash (crash recovery), retried while the dead server's backends linger."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._pg_ctl_start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):  # the postmaster we started, by its pid file
            pid_file = self.data / "postmaster.pid"
            if pid_file.is_file():
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)  # immediate shutdown
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip(missing("psycopg", "make test installs the [postgres] extra"))
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(missing("postgresql server (initdb, pg_ctl)", "make test installs it: apt-get install postgresql"))
    cluster = PostgresCluster(bindir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def private_postgres() -> Iterator[Callable[..., PostgresCluster]]:
    """A factory of clusters of the test's own (killed, restarted, filled to max_connections by fault tests
    without touching the session's cluster), stopped when the test ends."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip(missing("psycopg", "make test installs the [postgres] extra"))
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(missing("postgresql server (initdb, pg_ctl)", "make test installs it: apt-get install postgresql"))
    made: list[PostgresCluster] = []

    def make(max_connections: int = 400) -> PostgresCluster:
        made.append(PostgresCluster(bindir))
        return made[-1].start(max_connections)

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture
def pg_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database in the throwaway cluster, dropped after the test."""
    url = postgres_cluster.create_database()
    try:
        yield url
    finally:
        postgres_cluster.drop_database(url)


@pytest.fixture(params=BACKENDS)
def database_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Each store test once per backend: a SQLite file's folder, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "stores"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(autouse=True)
def _hubs_on_the_test_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under TANDEM_TEST_DATABASE=postgresql, every Hub a test builds without storage.database_url gets one:
    a database per data dir (so a restart on the same dir finds its data), dropped when the test ends.
    A test marked sqlite_only (it reads hub.db itself) skips there, saying so."""
    if hub_test_backend() != "postgresql":
        yield
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("sqlite_only: reads the hub's SQLite file itself; runs in the SQLite passes")
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    from tandem.cloud_hub.hub import Hub

    urls: dict[Path, str] = {}
    original = Hub.__init__

    def init(self: Any, config: Any = None) -> None:
        from tandem.cloud_hub.config import HubConfig

        config = config or HubConfig()
        if config.storage.database_url is None:
            key = Path(config.data_dir).resolve()
            if key not in urls:
                urls[key] = cluster.create_database()
            config = config.with_overrides({"storage.database_url": urls[key]})
        original(self, config)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Hub, "__init__", init)
        yield
    for url in urls.values():
        cluster.drop_database(url)
