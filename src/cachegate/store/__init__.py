"""Stores: where entries and generations live."""

from cachegate.store.base import Lookup, Store, StoreError, StoreTimeout, StoreUnavailable
from cachegate.store.memory import MemoryStore
from cachegate.store.redis import RedisStore

__all__ = [
    "Lookup",
    "MemoryStore",
    "RedisStore",
    "Store",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
]
