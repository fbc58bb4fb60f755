"""The `cachegate` command: `serve` runs the demo service."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cachegate.gate import CacheGate
from cachegate.store.base import Store
from cachegate.store.memory import MemoryStore
from cachegate.store.redis import RedisStore


def _store() -> Store:
    """Redis when `REDIS_URL` is set, else the embedded `MemoryStore`."""
    url = os.environ.get("REDIS_URL")
    return RedisStore.from_url(url) if url else MemoryStore()


def serve(args: argparse.Namespace) -> int:
    """Run the demo service under uvicorn."""
    try:
        import uvicorn

        from cachegate.demo.app import create_app, policies, write_rules
    except ImportError as error:
        print(f"cachegate serve needs the demo extra: pip install 'cachegate[demo]' ({error})")
        return 2
    gate = CacheGate(policies=policies(), write_rules=write_rules(), store=_store())
    app = create_app(gate, latency=args.latency)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="cachegate", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the demo service")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--latency", type=float, default=0.3, help="seconds the simulated model takes")
    run.set_defaults(handler=serve)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cachegate` command."""
    args = parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
