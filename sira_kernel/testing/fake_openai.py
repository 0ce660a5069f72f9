"""A fake OpenAI-format upstream: a real HTTP server on loopback, for tests.

A :class:`~sira_kernel.testing.loopback.LoopbackUpstream` (an aiohttp server on ``127.0.0.1`` in a
background thread, recorded requests, queued faults, stream counters) speaking OpenAI's format::

    from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault

    with FakeOpenAIUpstream(chunk_delay=0.01) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test")
        fake.enqueue(Fault(status=429, retry_after=2))     # the next request gets a 429
        ...
        assert fake.requests[-1].json["model"] == "gpt-4o-mini"

Public API
----------
``FakeOpenAIUpstream(*, chunk_delay=0.0, api_key=None, models=DEFAULT_MODELS, reasoning=False)``
    ``chunk_delay`` paces streamed chunks (seconds between them); ``api_key``, when set, makes the
    server demand ``Authorization: Bearer <key>`` (or Azure's ``api-key: <key>``) and answer 401
    otherwise; ``models`` is what ``GET /v1/models`` lists; ``reasoning`` adds reasoning text
    (``reasoning_content``) to every reply, as DeepSeek-style servers do.

    The loopback test API (``start()``/``stop()`` or ``with``, ``requests``, ``enqueue``, the stream
    counters, ``wait_until``, ``reset()``…; see :mod:`sira_kernel.testing.loopback`), with
    ``base_url`` ``"http://127.0.0.1:PORT/v1"`` and ``root_url`` ``"http://127.0.0.1:PORT"`` (the
    Azure-style ``base_url``). :class:`Fault` and :class:`RecordedRequest` are the loopback ones.

Endpoints
---------
``POST /v1/chat/completions`` (plain and ``stream: true`` SSE, ``stream_options.include_usage``,
``n``, tools, ``max_tokens``), ``POST /v1/embeddings``, ``GET /v1/models``, and the Azure scheme
``POST /openai/deployments/{deployment}/chat/completions?api-version=...`` (and ``/embeddings``).

Replies are deterministic. The text is ``"Echo: <last user message>"`` (``"Hello from the fake
upstream."`` when there is no user text), streamed one word per chunk. ``prompt_tokens`` is the number
of whitespace-separated words in all messages; ``completion_tokens`` the number of reply words (times
``n``). ``max_tokens``/``max_completion_tokens`` cut the reply to that many words (finish_reason
``"length"``). When the request has ``tools`` and the last message is a user message, the reply is a
tool call to the first tool with arguments ``{"location": "Paris"}`` (finish_reason ``"tool_calls"``);
with two tools or more and ``parallel_tool_calls`` not false, a second call to the second tool with
``{"location": "Tokyo"}``. Streamed tool-call arguments arrive in several fragments, as OpenAI sends
them. The request's ``model`` is echoed back (the deployment name for Azure when the body has none).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from .loopback import (
    FALLBACK_REPLY,
    THINKING_TEXT,
    TOOL_ARGUMENTS,
    Fault,
    LoopbackUpstream,
    RecordedRequest,
    body_fault,
    embedding_vector,
    fragments,
    split_words,
    sse_event,
)

__all__ = ["DEFAULT_MODELS", "Fault", "FakeOpenAIUpstream", "RecordedRequest", "chunk_event", "error_event"]

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
CREATED = 1_700_000_000
EMBEDDING_DIMENSIONS = 8

_STATUS_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("server_error", "timeout"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


class FakeOpenAIUpstream(LoopbackUpstream):
    """A real OpenAI-compatible HTTP server on loopback, run in a background thread. See the module doc."""

    def __init__(
        self,
        *,
        chunk_delay: float = 0.0,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        reasoning: bool = False,
    ) -> None:
        super().__init__(chunk_delay=chunk_delay, api_key=api_key, models=models)
        self.reasoning = reasoning

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the base URL for OpenAI clients."""
        return f"{self.root_url}/v1"

    # -- request handling ---------------------------------------------------------------------------

    async def handle(self, request: web.Request, body: Any, fault: Fault) -> web.StreamResponse:
        """Answer in OpenAI's format (see the module doc)."""
        is_stream = isinstance(body, dict) and bool(body.get("stream"))
        headers = self.fault_headers(fault)
        if fault.body is not None:
            return body_fault(fault, headers, stream=is_stream)
        if fault.status is not None and fault.status >= 400:
            return _error(fault.status, fault.message, headers)

        route = self._route(request)
        if route is None:
            return _error(404, f"Unknown request URL: {request.method} {request.path}", headers)
        kind, deployment = route
        if deployment is not None and "api-version" not in request.query:
            return _error(404, "Resource not found", headers)
        if not self._authorized(request, azure=deployment is not None):
            return _error(401, "Incorrect API key provided.", headers)
        if kind == "models":
            return web.json_response(self._models_body(), headers=headers)
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.", headers)
        model = body.get("model") or deployment
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", headers)
        if kind == "embeddings":
            return web.json_response(_embeddings_body(body, model), headers=headers)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty array", headers)
        self._ids += 1
        completion = _Completion.build(body, model, f"chatcmpl-fake-{self._ids}", self.reasoning)
        if is_stream:
            chunks = (sse_event(chunk) for chunk in completion.chunks())
            return await self.write_sse(request, chunks, fault, headers, tail=b"data: [DONE]\n\n")
        return await self.write_json(request, msgspec.json.encode(completion.response()), fault, headers)

    def _route(self, request: web.Request) -> tuple[str, str | None] | None:
        path = request.path.rstrip("/")
        if request.method == "GET" and path == "/v1/models":
            return ("models", None)
        if request.method != "POST":
            return None
        if path == "/v1/chat/completions":
            return ("chat", None)
        if path == "/v1/embeddings":
            return ("embeddings", None)
        parts = path.split("/")
        # /openai/deployments/{deployment}/{chat/completions|embeddings}
        if len(parts) >= 5 and parts[1] == "openai" and parts[2] == "deployments":
            rest = "/".join(parts[4:])
            if rest == "chat/completions":
                return ("chat", parts[3])
            if rest == "embeddings":
                return ("embeddings", parts[3])
        return None

    def _authorized(self, request: web.Request, *, azure: bool) -> bool:
        if self.api_key is None:
            return True
        if azure:
            return request.headers.get("api-key") == self.api_key
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _models_body(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in self.models],
        }


# -- reply construction -----------------------------------------------------------------------------


def chunk_event(delta: dict[str, Any], finish_reason: str | None = None, model: str = "gpt-4o-mini") -> bytes:
    """One ``chat.completion.chunk`` SSE event with ``delta`` for choice 0: for hand-made streams
    (``Fault(body=...)``), e.g. content followed by an in-stream error."""
    chunk = {"id": "chatcmpl-hand", "object": "chat.completion.chunk", "created": CREATED, "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    return sse_event(chunk)


def error_event(message: str, error_type: str = "server_error", code: str | None = None) -> bytes:
    """The SSE event an OpenAI-compatible server sends when it fails mid-stream."""
    return sse_event({"error": {"message": message, "type": error_type, "code": code}})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _word_count(messages: list[Any]) -> int:
    return sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


@dataclass
class _ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class _Completion:
    """A deterministic answer to one chat request, renderable whole or as stream chunks."""

    id: str
    model: str
    n: int
    words: list[str]
    reasoning_words: list[str]
    finish_reason: str
    tool_calls: list[_ToolCall]
    prompt_tokens: int
    include_usage: bool

    @classmethod
    def build(cls, body: dict[str, Any], model: str, completion_id: str, reasoning: bool) -> _Completion:
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        n = body.get("n") or 1
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        tool_calls: list[_ToolCall] = []
        last = messages[-1] if messages else {}
        tool_choice = body.get("tool_choice")
        if tools and last.get("role") == "user" and tool_choice != "none":
            if isinstance(tool_choice, dict):
                wanted = (tool_choice.get("function") or {}).get("name")
                tools = [t for t in tools if (t.get("function") or {}).get("name") == wanted] or tools[:1]
            count = 2 if len(tools) >= 2 and body.get("parallel_tool_calls") is not False else 1
            for k in range(count):
                name = (tools[k].get("function") or {}).get("name", f"tool_{k}")
                tool_calls.append(_ToolCall(f"call_fake_{k}", name, TOOL_ARGUMENTS[k]))
        user_text = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        text = f"Echo: {user_text}" if user_text.strip() else FALLBACK_REPLY
        words = [] if tool_calls else split_words(text)
        finish = "tool_calls" if tool_calls else "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            words, finish = words[:limit], "length"
        stream_options = body.get("stream_options") or {}
        return cls(
            id=completion_id,
            model=model,
            n=n if isinstance(n, int) and n > 0 else 1,
            words=words,
            reasoning_words=split_words(THINKING_TEXT) if reasoning else [],
            finish_reason=finish,
            tool_calls=tool_calls,
            prompt_tokens=_word_count(messages),
            include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        )

    @property
    def completion_tokens(self) -> int:
        per_choice = (
            len(self.words) + len(self.reasoning_words) + sum(len(fragments(c.arguments)) for c in self.tool_calls)
        )
        return per_choice * self.n

    def usage(self) -> dict[str, Any]:
        completion = self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": len(self.reasoning_words) * self.n},
        }

    def response(self) -> dict[str, Any]:
        """The non-streamed ``chat.completion`` object."""
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        else:
            message["content"] = "".join(self.words)
        if self.reasoning_words:
            message["reasoning_content"] = "".join(self.reasoning_words)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
                for i in range(self.n)
            ],
            "usage": self.usage(),
            "service_tier": "default",
        }

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _deltas(self) -> Iterator[dict[str, Any]]:
        yield {"role": "assistant", "content": None if self.tool_calls else "", "refusal": None}
        for word in self.reasoning_words:
            yield {"reasoning_content": word}
        for word in self.words:
            yield {"content": word}
        for k, call in enumerate(self.tool_calls):
            yield {
                "tool_calls": [
                    {
                        "index": k,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
            for fragment in fragments(call.arguments):
                yield {"tool_calls": [{"index": k, "function": {"arguments": fragment}}]}

    def chunks(self) -> Iterator[dict[str, Any]]:
        """The ``chat.completion.chunk`` objects of the stream, choices interleaved, usage last."""
        for delta in self._deltas():
            for i in range(self.n):
                yield self._chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        for i in range(self.n):
            yield self._chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": self.finish_reason}])
        if self.include_usage:
            final = self._chunk([])
            final["usage"] = self.usage()
            yield final


def _embeddings_body(body: dict[str, Any], model: str) -> dict[str, Any]:
    raw = body.get("input", "")
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [raw]  # one tokenised input
    else:
        inputs = list(raw) if isinstance(raw, list) else [raw]
    dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(str(x) for x in item)
        tokens += len(text.split()) if isinstance(item, str) else len(item)
        vector = embedding_vector(text, dimensions)
        embedding: Any = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _error(status: int, message: str | None, headers: dict[str, str]) -> web.Response:
    error_type, code = _STATUS_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    body = {
        "error": {
            "message": message or f"The fake upstream answered {status}.",
            "type": error_type,
            "param": None,
            "code": code,
        }
    }
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json", headers=headers)
