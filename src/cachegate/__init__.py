"""CacheGate: a cache in front of expensive AI work, rolled out safely with feature flags."""

from cachegate.comparators import (
    ExactComparator,
    JsonComparator,
    SimilarityComparator,
    TextComparator,
)
from cachegate.gate import CacheGate
from cachegate.keys import CacheScope, Normalization
from cachegate.limits import Limits
from cachegate.metrics import Metrics
from cachegate.middleware import CacheGateMiddleware
from cachegate.policy import (
    Pacing,
    Policy,
    RequestView,
    Streams,
    WriteRule,
    as_int,
    authenticated,
    body_field,
    header,
    path_param,
    query_param,
    trusted_header,
)
from cachegate.renamed import renamed
from cachegate.rollout import Decision, Mode, StaticRollout, current_decision
from cachegate.store import MemoryStore, RedisStore

__version__ = "0.1.0"

__all__ = [
    "CacheGate",
    "CacheGateMiddleware",
    "CacheScope",
    "Decision",
    "ExactComparator",
    "JsonComparator",
    "Limits",
    "MemoryStore",
    "Metrics",
    "Mode",
    "Normalization",
    "Pacing",
    "Policy",
    "RedisStore",
    "RequestView",
    "SimilarityComparator",
    "StaticRollout",
    "Streams",
    "TextComparator",
    "WriteRule",
    "as_int",
    "authenticated",
    "body_field",
    "current_decision",
    "header",
    "path_param",
    "query_param",
    "trusted_header",
]


_ASGI = "'scope' means the ASGI scope"
__getattr__ = renamed(
    "cachegate",
    {"Scope": f"cachegate.CacheScope (the tenant and subject of an entry); {_ASGI}"},
)
