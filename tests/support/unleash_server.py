"""A real Unleash server for tests: npm `unleash-server` (pinned), on the local PostgreSQL.

API:
- `unleash_server` — session-scoped pytest fixture yielding a running `UnleashServer`. Register it
  for every test module by adding to `tests/conftest.py`:
  `from support.unleash_server import unleash_server  # noqa: F401`.
- `UnleashServer` — `url` (server root), `api_url` (what SDKs and `UNLEASH_URL` take),
  `admin_token`, `client_token` (backend token of project `default`, environment
  `development`), `settings(...)` (an `UnleashSettings` for a connected `UnleashFlags`),
  `admin()` (an httpx client on the admin API), dashboard actions `switch(flag, on)` and
  `set_rollout(flag, percentage)`, `event_count()`, and `stop()` / `start()` to take the server
  down and bring it back on the same port and database.
- `running_unleash()` — the same as a context manager, for use outside pytest.

The package is installed once into the git-ignored `.cache/unleash` (`install_unleash()`, also
run by `make test`); each run gets a fresh database (dropped after), a free loopback port, admin
and client tokens set at boot, and no telemetry or version check. Without node, npm or
PostgreSQL the fixture skips; under `CI=true` it fails instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cachegate.flags import UnleashSettings
from support.components import missing

UNLEASH_VERSION = "7.5.1"
"""Pinned: its engines accept Node 20 (7.6+ needs Node 22)."""

REPO = Path(__file__).resolve().parents[2]
INSTALL_DIR = REPO / ".cache" / "unleash"
SERVER_JS = INSTALL_DIR / "node_modules" / "unleash-server" / "dist" / "server.js"

PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGPORT", "5432"))
PG_USER = os.environ.get("PGUSER", "postgres")
PG_PASSWORD = os.environ.get("PGPASSWORD", "")

PROJECT = "default"
ENVIRONMENT = "development"
BOOT_TIMEOUT = 60.0


class UnleashUnavailable(RuntimeError):
    """A component the server needs (node, npm, PostgreSQL) is missing: skip, or fail in CI."""


class UnleashFailed(RuntimeError):
    """The components are there but the server did not come up: always a failure."""


def install_unleash() -> Path:
    """Install `unleash-server@UNLEASH_VERSION` into `.cache/unleash` unless it is there."""
    if shutil.which("node") is None:
        raise UnleashUnavailable("node is needed to run the Unleash server")
    if _installed_version() == UNLEASH_VERSION:
        return SERVER_JS
    npm = shutil.which("npm")
    if npm is None:
        raise UnleashUnavailable(f"npm is needed to install unleash-server@{UNLEASH_VERSION}")
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    with (INSTALL_DIR / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version() != UNLEASH_VERSION:
            command = [npm, "install", "--prefix", str(INSTALL_DIR), "--no-audit", "--no-fund"]
            result = subprocess.run(
                [*command, f"unleash-server@{UNLEASH_VERSION}"],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0:
                raise UnleashUnavailable(f"npm install failed: {result.stderr[-2000:]}")
    return SERVER_JS


def _installed_version() -> str | None:
    package = SERVER_JS.parents[1] / "package.json"
    try:
        version = json.loads(package.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) else None


def _postgres(sql: str) -> None:
    """Run one statement on the `postgres` database with node's `pg` (installed with Unleash)."""
    script = (
        "const {Client} = require('pg');"
        "const c = new Client({host: process.env.PGHOST, port: +process.env.PGPORT,"
        " user: process.env.PGUSER, password: process.env.PGPASSWORD, database: 'postgres'});"
        "c.connect().then(() => c.query(process.env.SQL)).then(() => c.end())"
        ".catch(e => { console.error(e.message); process.exit(1); });"
    )
    env = {
        **os.environ,
        "PGHOST": PG_HOST,
        "PGPORT": str(PG_PORT),
        "PGUSER": PG_USER,
        "PGPASSWORD": PG_PASSWORD,
        "SQL": sql,
    }
    result = subprocess.run(
        ["node", "-e", script],
        cwd=INSTALL_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise UnleashUnavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT}: {result.stderr.strip()}")


def _check_postgres() -> None:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2):
            pass
    except OSError as exc:
        raise UnleashUnavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT}: {exc}") from exc


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class UnleashServer:
    """One Unleash server process on its own database; see the module docstring."""

    port: int
    database: str
    admin_token: str
    client_token: str
    log_path: Path
    project: str = PROJECT
    environment: str = ENVIRONMENT
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The server root (the dashboard, and what `cachegate.flags.admin` takes)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The API root, as SDKs and `UNLEASH_URL` take it."""
        return f"{self.url}/api"

    def settings(self, *, refresh_interval: int = 1, **overrides: Any) -> UnleashSettings:
        """Settings for a connected `UnleashFlags` on this server (unique instance id)."""
        values: dict[str, Any] = {
            "url": self.api_url,
            "api_token": self.client_token,
            "environment": self.environment,
            "refresh_interval": refresh_interval,
            "request_timeout": 2,
            "instance_id": f"test-{uuid.uuid4().hex[:8]}",
            "disable_metrics": True,
        }
        values.update(overrides)
        return UnleashSettings(**values)

    def start(self) -> None:
        """Start the process (again) and wait until it answers `/health`."""
        if self._process is not None and self._process.poll() is None:
            return
        credentials = f"{PG_USER}:{PG_PASSWORD}" if PG_PASSWORD else PG_USER
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{credentials}@{PG_HOST}:{PG_PORT}/{self.database}",
            "DATABASE_SSL": "false",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.port),
            "UNLEASH_URL": self.url,
            "INIT_ADMIN_API_TOKENS": self.admin_token,
            "INIT_BACKEND_API_TOKENS": self.client_token,
            "SEND_TELEMETRY": "false",
            "CHECK_VERSION": "false",
            "LOG_LEVEL": "warn",
            "TZ": "UTC",
        }
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                ["node", str(SERVER_JS)],
                cwd=INSTALL_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise UnleashFailed(f"Unleash exited at start:\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise UnleashFailed(f"Unleash did not answer in {BOOT_TIMEOUT} s:\n{self._log_tail()}")

    def _state(self) -> str:
        """The process's state and its log's tail, for a failure message."""
        process = self._process
        state = "never started" if process is None else f"exit code {process.poll()}"
        return f"connections ({state}):\n{self._log_tail()}"

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the process (the database stays, so `start()` brings the same state back)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def admin(self) -> httpx.Client:
        """An httpx client on the admin API (`/api/admin`), authorised with the admin token."""
        return httpx.Client(
            base_url=f"{self.url}/api/admin",
            headers={"Authorization": self.admin_token},
            timeout=10,
        )

    def switch(self, flag: str, *, on: bool) -> None:
        """Turn `flag` on or off in the environment, as the dashboard's toggle does.

        A server just (re)started on a loaded machine may answer `/health` a moment before it
        takes connections for good: a refused connection is tried again for a few seconds.
        """
        path = f"/projects/{self.project}/features/{flag}/environments/{self.environment}"
        deadline = time.monotonic() + 10
        with self.admin() as admin:
            while True:
                try:
                    admin.post(f"{path}/{'on' if on else 'off'}").raise_for_status()
                    return
                except httpx.ConnectError as error:
                    if time.monotonic() > deadline:
                        raise UnleashFailed(f"Unleash refuses {self._state()}") from error
                    time.sleep(0.2)

    def set_rollout(self, flag: str, percentage: int) -> None:
        """Edit the rollout percentage of `flag`'s first strategy, as the dashboard's form does."""
        path = f"/projects/{self.project}/features/{flag}/environments/{self.environment}"
        with self.admin() as admin:
            state = admin.get(path).raise_for_status().json()
            strategy = state["strategies"][0]
            body = {
                "name": strategy["name"],
                "title": strategy.get("title"),
                "constraints": strategy["constraints"],
                "parameters": {**strategy["parameters"], "rollout": str(percentage)},
                "variants": strategy.get("variants", []),
                "segments": strategy.get("segments", []),
                "disabled": False,
            }
            admin.put(f"{path}/strategies/{strategy['id']}", json=body).raise_for_status()

    def event_count(self) -> int:
        """How many events (changes) the server has recorded; written with each change."""
        with self.admin() as admin:
            response = admin.get("/search/events", params={"limit": 1}).raise_for_status()
        total: int = response.json()["total"]
        return total


@contextlib.contextmanager
def running_unleash() -> Iterator[UnleashServer]:
    """Install if needed, create a database, start a server; stop it and drop the database after."""
    install_unleash()
    _check_postgres()
    secret = uuid.uuid4().hex
    database = f"cachegate_unleash_{uuid.uuid4().hex[:10]}"
    logs = INSTALL_DIR / "logs"
    logs.mkdir(exist_ok=True)
    server = UnleashServer(
        port=free_port(),
        database=database,
        admin_token=f"*:*.admin{secret}",
        client_token=f"{PROJECT}:{ENVIRONMENT}.client{secret}",
        log_path=logs / f"{database}.log",
    )
    _postgres(f'CREATE DATABASE "{database}"')
    try:
        server.start()
        yield server
    finally:
        server.stop()
        _postgres(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        server.log_path.unlink(missing_ok=True)


_shared: UnleashServer | None = None


@contextlib.contextmanager
def _shared_unleash() -> Iterator[UnleashServer]:
    """One server per process, however many fixture definitions ask for it."""
    global _shared
    if _shared is not None:
        yield _shared
        return
    with running_unleash() as server:
        _shared = server
        try:
            yield server
        finally:
            _shared = None


@pytest.fixture(scope="session")
def unleash_server() -> Iterator[UnleashServer]:
    """A running Unleash server for the whole session (skipped locally, failed in CI, if a
    component is missing). Tests that stop it must `start()` it again."""
    stack = contextlib.ExitStack()
    try:
        server = stack.enter_context(_shared_unleash())
    except UnleashUnavailable as exc:
        missing(f"Unleash ({exc})")
    with stack:
        yield server
