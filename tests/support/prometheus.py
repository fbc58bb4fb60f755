"""A real Prometheus (the Debian package's binary) on a free loopback port, and an ASGI app served
by uvicorn in a background thread, for end-to-end tests of the dashboards and rules.

Both are started and stopped by the test (context managers); Prometheus gets a temporary
configuration and TSDB directory that are removed afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from support.redis_server import free_port


def prometheus_binary() -> str | None:
    """Path of `prometheus`, or None when it is not installed."""
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )


class Prometheus:
    """One spawned Prometheus scraping `targets` as `job`, evaluating `rule_files`, every second."""

    def __init__(
        self,
        binary: str,
        *,
        job: str,
        targets: Sequence[str],
        rule_files: Sequence[Path],
        interval: str = "1s",
    ) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="cg-prometheus-"))
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path.resolve()) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        self.config = self._dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = self._dir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=5.0)

    def start(self, timeout: float = 15.0) -> None:
        """Spawn Prometheus and wait until it reports ready."""
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self._dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.console.templates=" + str(self._dir),
                    "--web.console.libraries=" + str(self._dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{self.logs()}")
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        """The last lines Prometheus wrote."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""

    def api(self, path: str, **params: str) -> Any:
        """GET `/api/v1/<path>`; the `data` of a successful answer."""
        response = self.client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise PromQLError(body.get("errorType", "?"), body.get("error", response.text))
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar as a one-element list) `expr` evaluates to now."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            return list(data["result"])
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise PromQLError("unexpected", f"{expr} gave a {data['resultType']}")

    def wait_scraped(self, job: str, timeout: float = 10.0) -> None:
        """Wait until `job` has been scraped successfully (so a load's increases are seen)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(s["value"][1] == "1" for s in self.query(f'up{{job="{job}"}}')):
                return
            time.sleep(0.1)
        raise RuntimeError(f"job {job} not scraped within {timeout}s:\n{self.logs()}")

    def values(self, expr: str) -> dict[str, float]:
        """`expr`'s samples now, keyed by their labels (`name=value,...`, sorted)."""
        return {
            ",".join(f"{k}={v}" for k, v in sorted(sample["metric"].items())): float(
                sample["value"][1]
            )
            for sample in self.query(expr)
        }

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (recording and alerting), with its group's name as `group`."""
        return [
            {**rule, "group": group["name"]}
            for group in self.api("rules")["groups"]
            for rule in group["rules"]
        ]

    def stop(self) -> None:
        """Terminate Prometheus, remove its files."""
        self.client.close()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)


class PromQLError(RuntimeError):
    """An error answer of the Prometheus HTTP API."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@contextmanager
def running_prometheus(binary: str, **options: Any) -> Iterator[Prometheus]:
    """A started Prometheus, stopped (and its files removed) on exit, even on failure."""
    server = Prometheus(binary, **options)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def serving(
    app: Any, *, cleanup: Callable[[], Awaitable[None]] | None = None, timeout: float = 10.0
) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields its base URL.

    The thread owns its event loop; `cleanup` (e.g. closing a Redis client the app used) runs in
    that loop after the server stopped.
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    failure: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(server.serve())
            if cleanup is not None:
                loop.run_until_complete(cleanup())
        except BaseException as error:  # reported to the test thread
            failure.append(error)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            raise RuntimeError(f"uvicorn did not start: {failure or 'timeout'}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    if failure:  # only when the test itself passed: never hide its failure
        raise failure[0]
