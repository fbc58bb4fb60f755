"""CacheGate: a cache in front of expensive AI work, rolled out safely with feature flags."""

__version__ = "0.1.0"
