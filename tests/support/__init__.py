"""Helpers shared by the core test modules: a spawned redis-server, a raw ASGI driver, test apps."""
