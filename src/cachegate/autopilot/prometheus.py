"""Read one figure per PromQL expression from a Prometheus server's HTTP API."""

from __future__ import annotations

import math

import httpx

from cachegate.autopilot.gates import MetricsUnavailable

__all__ = ["PrometheusReader"]


class PrometheusReader:
    """A `MetricsReader` over `/api/v1/query`; every failure is `MetricsUnavailable`."""

    def __init__(self, url: str, *, timeout: float = 5.0, client: httpx.Client | None = None):
        """`url` is the server root (`http://host:9090`); `client` replaces the default one."""
        self.url = url.rstrip("/")
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()

    def query(self, expr: str, *, at: float | None = None) -> float | None:
        """The single value of `expr` (at unix time `at`, or now); None for an empty answer.

        A vector of several series is refused (gates aggregate with `sum`/`max`): summing
        them here would hide a query that does not mean what its gate says.
        """
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            response = self._client.get(f"{self.url}/api/v1/query", params=params)
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url} unreachable: {exc}") from exc
        try:
            answer = response.json()
        except ValueError:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} answered HTTP {response.status_code}, not JSON"
            ) from None
        if response.status_code >= 400 or answer.get("status") != "success":
            detail = answer.get("error") if isinstance(answer, dict) else None
            raise MetricsUnavailable(
                f"Prometheus refused {expr!r}: HTTP {response.status_code} {detail or ''}".strip()
            )
        return _value(answer.get("data") or {}, expr)


def _value(data: dict[str, object], expr: str) -> float | None:
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar" and isinstance(result, list):
        return _number(result[1])
    if kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            raise MetricsUnavailable(f"{expr!r} returned {len(result)} series, not one")
        sample = result[0]
        if isinstance(sample, dict) and isinstance(sample.get("value"), list):
            return _number(sample["value"][1])
    raise MetricsUnavailable(f"unexpected answer to {expr!r}: {kind}")


def _number(text: object) -> float:
    try:
        return float(str(text))
    except ValueError:
        return math.nan
