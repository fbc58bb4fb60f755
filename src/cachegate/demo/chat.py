"""The demo's OpenAI-compatible chat completions: the same answer as `/ai/query`, shaped as a
`chat.completion` or streamed as `chat.completion.chunk` Server-Sent Events ending in
`data: [DONE]`.

Everything in a completion is a function of the question and the notes (the id is a digest,
`created` is fixed), so a cached stream that differs from a fresh one is stale, never noise.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from cachegate.policy import Pacing, Policy, Streams, body_field, trusted_header

CHAT_ROUTE = "/v1/chat/completions"
CREATED = 1_700_000_000
"""The `created` of every completion: a fixed time keeps answers deterministic."""
DONE = b"data: [DONE]"
_TOKEN = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class Question:
    """A valid chat request: its model, last user message, optional `user` and `stream`."""

    model: str
    text: str
    user: str | None
    stream: bool


def parse(payload: object) -> Question | str:
    """The question of a chat request, or why it is not one (a 400 for the client)."""
    if not isinstance(payload, dict):
        return "body must be a JSON object"
    model, messages, user = payload.get("model"), payload.get("messages"), payload.get("user")
    if not isinstance(model, str) or not model:
        return "model must be a non-empty string"
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return "the last message must be the user's"
    text = last.get("content")
    if not isinstance(text, str) or not text.strip():
        return "the user's content must be a non-empty string"
    if user is not None and (not isinstance(user, str) or not user):
        return "user must be a non-empty string"
    return Question(model, text, user, payload.get("stream") is True)


def chat_policy(tenant_header: str, cost: float) -> Policy:
    """The chat route's policy: per workspace (and `user`, the client), keyed on the model, the
    messages and whether the answer streams; streams replay paced, and only a stream that
    ended with `data: [DONE]` is stored."""
    return Policy(
        CHAT_ROUTE,
        tenant=trusted_header(tenant_header),
        subject=body_field("user"),
        key={
            "model": body_field("model"),
            "messages": body_field("messages"),
            "stream": body_field("stream"),
        },
        ttl=300.0,
        rerun_safe=True,
        cost_per_call=cost,
        streams=Streams(pacing=Pacing.PACED, factor=1.0, cap=0.25, terminal=DONE),
    )


def _id(question: Question, answer: str) -> str:
    digest = hashlib.sha256(f"{question.model}\n{question.text}\n{answer}".encode()).hexdigest()
    return f"chatcmpl-{digest[:24]}"


def _usage(question: Question, answer: str) -> dict[str, int]:
    prompt, completion = len(question.text.split()), len(answer.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(question: Question, answer: str) -> dict[str, object]:
    """The non-streaming `chat.completion` of an answer."""
    return {
        "id": _id(question, answer),
        "object": "chat.completion",
        "created": CREATED,
        "model": question.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(question, answer),
    }


def tokens(answer: str) -> list[str]:
    """The answer in the pieces a model would stream: words with their trailing space."""
    return _TOKEN.findall(answer) or [answer]


def events(question: Question, answer: str) -> Iterator[bytes]:
    """The SSE events of the streamed answer: the role, one chunk per token, the finish (with
    usage, as `stream_options.include_usage` gives), then `data: [DONE]`."""
    ident = _id(question, answer)

    def chunk(delta: dict[str, str], finish: str | None, **extra: object) -> bytes:
        body = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": question.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for token in tokens(answer):
        yield chunk({"content": token}, None)
    yield chunk({}, "stop", usage=_usage(question, answer))
    yield DONE + b"\n\n"
