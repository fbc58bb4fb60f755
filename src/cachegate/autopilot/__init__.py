"""The rollout autopilot: advances, holds or rolls back the flag stages by measured correctness.

Reads CacheGate's own metrics from Prometheus, judges them with the gates of the rollout plan
(`flags/rollout-plan.toml`) and moves the stages through the Unleash admin API. The core
(middleware, stores, flags) never imports this package.
"""
