"""A Cohere-compatible `POST /v2/embed` server on loopback, for tests through the real SDK.

It answers with the shape of Cohere's v2 embed response (`id`, `embeddings` by type, `texts`,
`meta.api_version`, `meta.billed_units.input_tokens`, `response_type`), enforces the API's
limit of 96 texts per call (400 above it), and derives every vector deterministically from
(model, input_type, text, dimension), so tests can check values. It records each request,
can be made slow, and can answer scripted errors (429, 500, ...).

Divergence from the real API, for test speed: any `output_dimension` that is a positive
multiple of 8 is accepted (Cohere accepts 256, 512, 1024 and 1536 on embed-v4 only).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import random
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_TEXTS = 96
EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
TRUNCATE = ("NONE", "START", "END")


@functools.lru_cache(maxsize=65_536)
def _unit_vector(model: str, input_type: str, text: str, dimension: int) -> tuple[float, ...]:
    """A unit vector of float64 values, fixed per input (what the real API's JSON parses to)."""
    seed = hashlib.sha256(json.dumps([model, input_type, text, dimension]).encode("utf-8")).digest()
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(dimension)]
    norm = math.sqrt(math.fsum(x * x for x in values))
    return tuple(x / norm for x in values)


@functools.lru_cache(maxsize=65_536)
def _float_vector(model: str, input_type: str, text: str, dimension: int) -> tuple[float, ...]:
    unit = _unit_vector(model, input_type, text, dimension)
    return struct.unpack(f"<{dimension}f", struct.pack(f"<{dimension}f", *unit))


def float_vector(model: str, input_type: str, text: str, dimension: int) -> list[float]:
    """The float embedding of `text`: a unit vector of float32 values, fixed per input."""
    return list(_float_vector(model, input_type, text, dimension))


def embedding(
    kind: str, model: str, input_type: str, text: str, dimension: int, *, float64: bool = False
) -> list[float] | list[int] | str:
    """The embedding of one text of one type, derived from its float embedding (float32 values,
    or with `float64` the full-precision ones, as Cohere's JSON decimals parse)."""
    vector = _float_vector(model, input_type, text, dimension)
    if kind == "float":
        return list(_unit_vector(model, input_type, text, dimension) if float64 else vector)
    if kind == "base64":
        return base64.b64encode(struct.pack(f"<{dimension}f", *vector)).decode("ascii")
    scale = 127.0 / max(abs(x) for x in vector)
    int8 = [max(-128, min(127, round(x * scale))) for x in vector]
    if kind == "int8":
        return int8
    if kind == "uint8":
        return [x + 128 for x in int8]
    ubinary = []
    for start in range(0, dimension, 8):
        byte = 0
        for x in vector[start : start + 8]:
            byte = (byte << 1) | (1 if x > 0 else 0)
        ubinary.append(byte)
    return ubinary if kind == "ubinary" else [x - 128 for x in ubinary]


def tokens_for(text: str) -> int:
    """Billed input tokens of one text: its word count, at least one."""
    return max(1, len(text.split()))


@dataclass(frozen=True)
class EmbedCall:
    """One request the server received, and the status it answered."""

    texts: list[str]
    model: str | None
    input_type: str | None
    embedding_types: list[str] | None
    output_dimension: int | None
    truncate: str | None
    max_tokens: int | None
    status: int


@dataclass
class _Failure:
    status: int
    times: int
    after: int


@dataclass
class _State:
    default_dimension: int
    delay: float = 0.0
    float64: bool = False
    calls: list[EmbedCall] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    seen: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class CohereServer:
    """The stand-in Cohere API. Start it, point `base_url` at `url`, read `calls`."""

    def __init__(
        self, *, default_dimension: int = 1024, delay: float = 0.0, float64: bool = False
    ) -> None:
        self._state = _State(default_dimension=default_dimension, delay=delay, float64=float64)
        state = self._state

        class Handler(_Handler):
            pass

        Handler.state = state
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL to give the SDK."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def calls(self) -> list[EmbedCall]:
        """Every embed request received so far (answered or failed), in arrival order."""
        with self._state.lock:
            return list(self._state.calls)

    @property
    def ok_calls(self) -> list[EmbedCall]:
        """The requests answered 200."""
        return [call for call in self.calls if call.status == 200]

    @property
    def texts_per_call(self) -> list[int]:
        """How many texts each request answered 200 carried."""
        return [len(call.texts) for call in self.ok_calls]

    @property
    def max_in_flight(self) -> int:
        """The most requests handled at the same time."""
        return self._state.max_in_flight

    @property
    def delay(self) -> float:
        """Seconds each request waits before it is answered."""
        return self._state.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._state.delay = seconds

    def fail(self, status: int, *, times: int = 1, after: int = 0) -> None:
        """Answer `status` to `times` requests, after letting `after` requests through."""
        with self._state.lock:
            self._state.failures.append(_Failure(status, times, self._state.seen + after))

    def reset(self) -> None:
        """Forget requests, failures and delay (between tests)."""
        with self._state.lock:
            self._state.calls.clear()
            self._state.failures.clear()
            self._state.seen = 0
            self._state.max_in_flight = 0
            self._state.delay = 0.0

    def start(self) -> CohereServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> CohereServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    state: _State

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v2/embed":
            self._answer(404, {"message": f"no route {self.path}"})
            return
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            self._answer(401, {"message": "no api key supplied"})
            return
        state = self.state
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            ordinal = state.seen
            state.seen += 1
            scripted = next(
                (f for f in state.failures if f.after <= ordinal < f.after + f.times), None
            )
        try:
            if state.delay:
                time.sleep(state.delay)
            status, body, call = self._embed(raw, scripted)
            with state.lock:
                state.calls.append(call)
        finally:
            with state.lock:
                state.in_flight -= 1
        self._answer(status, body)

    def _embed(
        self, raw: bytes, scripted: _Failure | None
    ) -> tuple[int, dict[str, Any], EmbedCall]:
        try:
            request = json.loads(raw)
        except json.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            return (
                400,
                {"message": "invalid json"},
                EmbedCall([], None, None, None, None, None, None, 400),
            )
        texts = request.get("texts")
        types = request.get("embedding_types")
        dimension = request.get("output_dimension")
        call = EmbedCall(
            texts=list(texts) if isinstance(texts, list) else [],
            model=request.get("model"),
            input_type=request.get("input_type"),
            embedding_types=types,
            output_dimension=dimension,
            truncate=request.get("truncate"),
            max_tokens=request.get("max_tokens"),
            status=200,
        )

        def error(status: int, message: str) -> tuple[int, dict[str, Any], EmbedCall]:
            return status, {"message": message}, EmbedCall(**{**call.__dict__, "status": status})

        if scripted is not None:
            return error(scripted.status, f"scripted failure {scripted.status}")
        if not isinstance(call.model, str) or not call.model:
            return error(400, "invalid request: model must be specified")
        if call.input_type not in (
            "search_document",
            "search_query",
            "classification",
            "clustering",
        ):
            return error(400, "invalid request: valid input_type must be provided")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return error(400, "invalid request: texts must be a non-empty list of strings")
        if len(texts) > MAX_TEXTS:
            return error(
                400,
                f"invalid request: total number of texts must be at most {MAX_TEXTS} "
                f"- received {len(texts)}",
            )
        kinds = ["float"] if types is None else types
        if not isinstance(kinds, list) or not all(k in EMBEDDING_TYPES for k in kinds):
            return error(400, f"invalid request: embedding_types {types!r} not supported")
        if dimension is None:
            dimension = self.state.default_dimension
        elif not isinstance(dimension, int) or dimension <= 0 or dimension % 8:
            return error(400, f"invalid request: output_dimension {dimension!r} not supported")
        if call.truncate is not None and call.truncate not in TRUNCATE:
            return error(400, f"invalid request: truncate {call.truncate!r} not supported")
        embeddings = {
            kind: [
                embedding(
                    kind, call.model, call.input_type, t, dimension, float64=self.state.float64
                )
                for t in texts
            ]
            for kind in dict.fromkeys(kinds)
        }
        body = {
            "id": str(uuid.uuid4()),
            "embeddings": embeddings,
            "texts": texts,
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"input_tokens": sum(tokens_for(t) for t in texts)},
            },
            "response_type": "embeddings_by_type",
        }
        return 200, body, call

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
