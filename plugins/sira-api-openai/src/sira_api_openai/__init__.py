"""Sira's OpenAI-compatible HTTP surface (plugin id ``api-openai``).

Routes, under each configured prefix (default ``/v1`` and ``/api/v1``):

* ``POST {prefix}/chat/completions`` — non-streaming and streaming (SSE, ``data: [DONE]``,
  ``stream_options.include_usage``); unknown fields pass through to providers that accept them.
* ``POST {prefix}/embeddings``
* ``GET {prefix}/models`` and ``GET {prefix}/models/{model}``

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` and status, with
``Retry-After`` on 429/503. An upstream failure after a stream started ends the stream with an
``error`` data line, which the ``openai`` SDK raises as ``APIError``. A client that disconnects
cancels the upstream call at once.

Endpoints are raw ASGI callables (no per-request Starlette ``Request``) because this is the hot path;
the plumbing (body limit, disconnects, stream relay, headers) is ``sira_kernel.surface``'s.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sira_kernel import ChatStream, ModelNotFound, SiraError, StreamError, hookimpl
from sira_kernel.logs import get_logger
from sira_kernel.registrations import RouteRegistrar
from sira_kernel.surface import (
    Endpoint,
    Receive,
    Scope,
    Send,
    SurfacePlugin,
    relay_stream,
    request_info,
    retry_after_headers,
    route_header,
    send_json,
    start_event_stream,
    unless_disconnected,
)

from ._wire import DONE, ChunkEncoder, decode_chat, decode_embeddings, error_body, stream_error_line

__all__ = ["OpenAISurfaceConfig", "OpenAISurfacePlugin"]

_log = get_logger("api-openai")
_encode = msgspec.json.Encoder().encode


class OpenAISurfaceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prefixes: list[str] = msgspec.field(default_factory=lambda: ["/v1", "/api/v1"])
    """Path prefixes the routes are served under."""


class _Endpoint(Endpoint["OpenAISurfacePlugin"]):
    """Answers errors in OpenAI's shape, with ``Retry-After`` when the error has one."""

    async def send_error(self, scope: Scope, send: Send, exc: SiraError) -> None:
        await send_json(scope, send, exc.status, error_body(exc), retry_after_headers(exc))


class ChatCompletions(_Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        kernel = self.kernel
        body = await self.read_body(scope, receive)
        request = decode_chat(body)
        info = request_info(scope, "openai")
        if not request.stream:
            response = await unless_disconnected(receive, lambda: kernel.pipeline.chat(request, info))
            await send_json(scope, send, 200, _encode(response), route_header(info))
            return
        stream = await unless_disconnected(receive, lambda: kernel.pipeline.stream(request, info))
        await relay_stream(receive, send, stream, self._write, scope, send, stream, request.include_usage,
                           route_header(info))

    @staticmethod
    async def _write(
        scope: Scope, send: Send, stream: ChatStream, include_usage: bool, headers: list[tuple[bytes, bytes]] | None
    ) -> bytes:
        """Send the response head and every event; return the bytes that end the stream.

        The events that arrived from the upstream together go out in one body message (one write).
        """
        batches = stream.batches()
        first = await batches.__anext__()
        encoder = ChunkEncoder(first[0], include_usage)  # type: ignore[arg-type]
        await start_event_stream(scope, send, headers)
        body = encoder.first()
        if len(first) > 1:
            body += encoder.encode_batch(first[1:])
        if isinstance(first[-1], StreamError):
            return body
        await send({"type": "http.response.body", "body": body, "more_body": True})
        with stream.guard() as guard:
            try:
                async for batch in batches:
                    body = encoder.encode_batch(batch)
                    if isinstance(batch[-1], StreamError):
                        return body
                    if body:
                        await send({"type": "http.response.body", "body": body, "more_body": True})
            except SiraError as exc:
                return stream_error_line(exc.stream_event())
        if guard.cancelled_caught:  # deadline passed, or the provider was unloaded past its drain timeout
            return stream_error_line(stream.interrupted())
        return DONE


class Embeddings(_Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        kernel = self.kernel
        body = await self.read_body(scope, receive)
        request = decode_embeddings(body)
        info = request_info(scope, "openai")
        response = await unless_disconnected(receive, lambda: kernel.pipeline.embed(request, info))
        await send_json(scope, send, 200, _encode(response), route_header(info))


def _model_entry(model: Any) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.owned_by}


class Models(_Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        models = await self.kernel.pipeline.models(request_info(scope, "openai"))
        wanted = scope.get("path_params", {}).get("model")
        if wanted is not None:
            for model in models:
                if model.id == wanted:
                    await send_json(scope, send, 200, _encode(_model_entry(model)))
                    return
            raise ModelNotFound(f"the model {wanted!r} does not exist", param="model")
        body = {"object": "list", "data": [_model_entry(m) for m in models]}
        await send_json(scope, send, 200, _encode(body))


class OpenAISurfacePlugin(SurfacePlugin[OpenAISurfaceConfig]):
    """Registers the OpenAI-compatible routes on the public listener."""

    sira_api = 1
    Config = OpenAISurfaceConfig

    @hookimpl
    def sira_register_routes(self, register: RouteRegistrar) -> None:
        chat, embeddings, models = ChatCompletions(self), Embeddings(self), Models(self)
        for prefix in self.config.prefixes:
            prefix = prefix.rstrip("/")
            register(f"{prefix}/chat/completions", chat, methods=["POST"])
            register(f"{prefix}/embeddings", embeddings, methods=["POST"])
            register(f"{prefix}/models", models, methods=["GET"])
            register(f"{prefix}/models/{{model:path}}", models, methods=["GET"])
