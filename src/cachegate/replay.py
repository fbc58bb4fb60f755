"""Moved: `cachegate.replay` is demo tooling, now `cachegate.demo.replay`."""

raise ImportError("cachegate.replay moved to cachegate.demo.replay")
