"""`cachegate rollout status|step|run|rollback` for a plan of tracks (one decision per track).

The command line parses the arguments and, when the plan has `[[tracks]]`, hands them here; a
plan of whole stages is run by the command line as before. Kept beside the controller so the
command line only decides which one runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TextIO

from cachegate.autopilot import report
from cachegate.autopilot.decision import Action, Decision
from cachegate.autopilot.layers import UnleashLayers
from cachegate.autopilot.plan import Plan
from cachegate.autopilot.prometheus import PrometheusReader
from cachegate.autopilot.telemetry import AutopilotMetrics, default_autopilot_metrics
from cachegate.autopilot.tracks import TrackController
from cachegate.flags.admin import FlagAdminError

__all__ = ["rollout_tracks"]

OK, FAILED = 0, 1


def rollout_tracks(
    args: argparse.Namespace, plan: Plan, admin_token: str, err: TextIO, out: TextIO | None = None
) -> int:
    """Run one `rollout` action over the tracks of `plan`; 1 after a rollback, a timeout or an
    Unleash failure, 0 otherwise."""
    out = out if out is not None else sys.stdout
    if args.interval is not None:
        plan = replace(plan, interval=args.interval)
    reader = PrometheusReader(args.prometheus or "http://127.0.0.1:9090")
    layers = UnleashLayers(
        args.unleash_url, admin_token, plan, project=args.project, environment=args.environment
    )
    tracks = TrackController(plan, reader, layers, dry_run=args.dry_run)
    metrics = _metrics(args, plan)
    colour = out.isatty() and not args.json
    try:
        if args.action == "run":
            return _run(tracks, args, metrics, out, colour=colour)
        if args.action == "status":
            decisions = tracks.status()
        elif args.action == "step":
            decisions = tracks.step()
        else:
            decisions = (
                tracks.rollback(getattr(args, "track", None), kill_switch=args.kill_switch),
            )
        _emit(decisions, metrics, out, as_json=args.json, colour=colour)
        if args.action == "step" and any(d.action is Action.ROLLBACK for d in decisions):
            return FAILED
    except (FlagAdminError, KeyError) as error:
        err.write(f"cachegate rollout {args.action}: {error}\n")
        return FAILED
    finally:
        reader.close()
    return OK


def _metrics(args: argparse.Namespace, plan: Plan) -> AutopilotMetrics | None:
    if not getattr(args, "metrics_port", None):
        return None
    from prometheus_client import start_http_server

    metrics = default_autopilot_metrics((), {t.name: t.names for t in plan.tracks})
    start_http_server(args.metrics_port, addr=args.metrics_host)
    return metrics


def _emit(
    decisions: Sequence[Decision],
    metrics: AutopilotMetrics | None,
    out: TextIO,
    *,
    as_json: bool,
    colour: bool,
) -> None:
    for decision in decisions:
        if metrics is not None:
            metrics.record(decision)
    if as_json:
        out.write(report.render_json(decisions))
    else:
        out.write("".join(report.render_decision(d, colour=colour) for d in decisions))
    out.flush()


def _run(
    tracks: TrackController,
    args: argparse.Namespace,
    metrics: AutopilotMetrics | None,
    out: TextIO,
    *,
    colour: bool,
) -> int:
    """Step every interval until every track is complete (0), a rollback (1) or `--timeout`."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        decisions = tracks.step()
        _emit(decisions, metrics, out, as_json=args.json, colour=colour)
        if all(d.action is Action.COMPLETE for d in decisions):
            return OK
        if any(d.action is Action.ROLLBACK for d in decisions):
            return FAILED
        if deadline is not None and time.monotonic() >= deadline:
            return FAILED
        time.sleep(tracks.plan.interval)
