"""Moved: `cachegate.workload` is demo tooling, now `cachegate.demo.workload`."""

raise ImportError("cachegate.workload moved to cachegate.demo.workload")
