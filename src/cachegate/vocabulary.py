"""The words CacheGate reports in: layers, cache paths, comparison kinds, and why a request
bypassed or a response was not stored.

Metrics labels, the `X-CacheGate` header (`Served`), span attributes and the replay report all
take their values from these enums, so a typo is a type error rather than a new time series.
"""

from __future__ import annotations

from enum import StrEnum


class Layer(StrEnum):
    """A cache layer: the `cache_layer` label, as in the original service."""

    RESULT = "query_result"
    """L1: whole responses of AI endpoints."""
    EMBEDDING = "embedding"
    """L2: embedding vectors per text."""


class CachePath(StrEnum):
    """How one request on a cached route was answered: the `path` label."""

    HIT = "hit"
    SHARED = "shared"
    """A single-flight waiter answered with its leader's fresh result."""
    MISS = "miss"
    SHADOW = "shadow"
    BYPASS = "bypass"


class Served(StrEnum):
    """The `X-CacheGate` response header: how an answer on a cached route was served. The
    replay report groups answers by it."""

    HIT = "hit"
    MISS = "miss"
    SHADOW_HIT = "shadow-hit"
    SHADOW_MISS = "shadow-miss"
    BYPASS = "bypass"

    header: bytes
    """The header's value as sent, encoded once."""

    def __init__(self, value: str) -> None:
        self.header = value.encode()


class ComparisonKind(StrEnum):
    """What a comparison compared: cached with fresh before serving (`shadow`), after serving
    (`verify`), or fresh with fresh (`noise`, the nondeterminism baseline)."""

    SHADOW = "shadow"
    VERIFY = "verify"
    NOISE = "noise"


class BypassReason(StrEnum):
    """Why a request on a cached route went to the app uncached."""

    NO_TENANT = "no_tenant"
    BODY_TOO_LARGE = "body_too_large"
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    HEADERS_TOO_LARGE = "headers_too_large"
    REQUEST_NO_CACHE = "request_no_cache"
    EXTRACTOR_ERROR = "extractor_error"
    MODE_OFF = "mode_off"
    INVALIDATION_PENDING = "invalidation_pending"
    STORE_ERROR = "store_error"
    DISCONNECTED = "disconnected"
    NO_AUTHENTICATION = "no_authentication"
    GUARD_REFUSED = "guard_refused"
    GUARD_ERROR = "guard_error"
    AMBIGUOUS_VALUE = "ambiguous_value"
    EMPTY_VALUE = "empty_value"
    INVALID_VALUE = "invalid_value"
    BODY_NOT_OBJECT = "body_not_object"
    NOT_JSON = "not_json"


class UncacheableReason(StrEnum):
    """Why a fresh response was served but not stored."""

    STATUS = "status"
    SET_COOKIE = "set_cookie"
    CACHE_CONTROL = "cache_control"
    STREAMED = "streamed"
    TOO_LARGE = "too_large"
    VARY = "vary"
    ERROR = "error"
    STREAM_DISCONNECTED = "stream_disconnected"
    STREAM_ERROR = "stream_error"
    STREAM_INCOMPLETE = "stream_incomplete"
    STREAM_UNTERMINATED = "stream_unterminated"
    STREAM_TOO_LARGE = "stream_too_large"
