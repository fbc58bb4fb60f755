"""The demo service `make run` starts: an AI assistant over therapy session notes."""

DEFAULT_STAGE = "l1-100"
"""`make run` serves cached answers at once; `--stage dark-launch` starts where a rollout does."""
DEFAULT_LATENCY = 1.25
"""Seconds of the simulated model: with the embedding, the original ~1.75 s per fresh answer."""
DEFAULT_EMBED_LATENCY = 0.5
"""Seconds of a simulated embedding call (the original ~0.5 s Cohere call)."""
