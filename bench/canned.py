"""Canned OpenAI payloads shared by the upstreams and the load generators.

Every upstream in the benchmark answers with these exact bytes, so that the direct, passthrough
and Sira rows move the same payloads. The non-stream body is a realistic ``chat.completion``
(about 600 bytes, with ``usage``); the stream is a sequence of ``chat.completion.chunk`` events
ending in ``data: [DONE]``, as OpenAI sends them.
"""

from __future__ import annotations

import json

__all__ = [
    "CHAT_COMPLETION",
    "MASTER_KEY",
    "MODEL",
    "REQUEST",
    "STREAM_REQUEST",
    "UPSTREAM_KEY",
    "sse_events",
]

#: The key clients present to the gateways under test.
MASTER_KEY = "sk-bench-master-key"
#: The key the gateways present to the upstream (the upstream does not check it).
UPSTREAM_KEY = "sk-upstream-bench"
MODEL = "gpt-4o-mini"

#: Request bodies the load generators send.
REQUEST = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}]}, separators=(",", ":")
).encode()
STREAM_REQUEST = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}], "stream": True},
    separators=(",", ":"),
).encode()

_ID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
_CREATED = 1741570283
_SERVED_MODEL = "gpt-4o-mini-2024-07-18"
_FINGERPRINT = "fp_06737a9306"
_ANSWER = "Hello! How can I help you today? If you have a question, just ask and I will do my best."

_USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 22,
    "total_tokens": 31,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


#: The non-stream answer (no ``$``, ``'`` or ``\\`` in it: nginx embeds it in its config verbatim).
CHAT_COMPLETION = _dumps(
    {
        "id": _ID,
        "object": "chat.completion",
        "created": _CREATED,
        "model": _SERVED_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _ANSWER, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
)


def _chunk(delta: dict[str, object], finish_reason: str | None, usage: object = None) -> bytes:
    choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return _dumps(
        {
            "id": _ID,
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": _SERVED_MODEL,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
            "choices": choices if usage is None else [],
            "usage": usage,
        }
    )


def sse_events(chunks: int, include_usage: bool = False) -> list[bytes]:
    """The SSE events of one streamed answer: ``chunks`` content deltas, then the finish chunk,
    the usage chunk when asked for (``stream_options.include_usage``) and ``data: [DONE]``.

    Each item is one complete event (``data: ...\\n\\n``), the unit the pacing upstream sends.
    """
    words = _ANSWER.split(" ")
    payloads = [_chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    for i in range(chunks):
        word = words[i % len(words)]
        payloads.append(_chunk({"content": word if i == 0 else " " + word}, None))
    payloads.append(_chunk({}, "stop"))
    if include_usage:
        payloads.append(_chunk({}, None, usage=_USAGE))
    events = [b"data: " + payload + b"\n\n" for payload in payloads]
    events.append(b"data: [DONE]\n\n")
    return events
