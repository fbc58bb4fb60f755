"""Stores: where entries and generations live."""

from cachegate.store.base import Lookup, Store, StoreError, StoreTimeout, StoreUnavailable
from cachegate.store.memory import MemoryStore

__all__ = ["Lookup", "MemoryStore", "Store", "StoreError", "StoreTimeout", "StoreUnavailable"]
