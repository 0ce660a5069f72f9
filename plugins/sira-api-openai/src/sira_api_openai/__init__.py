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

Endpoints are raw ASGI callables (no per-request Starlette ``Request``) because this is the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from sira_kernel import (
    ChatStream,
    Kernel,
    ModelNotFound,
    PayloadTooLarge,
    PluginContext,
    RequestInfo,
    SiraError,
    StreamError,
    hookimpl,
)
from sira_kernel.logs import get_logger
from sira_kernel.registrations import RouteRegistrar

from ._wire import DONE, ChunkEncoder, decode_chat, decode_embeddings, error_body, stream_error_line

__all__ = ["OpenAISurfaceConfig", "OpenAISurfacePlugin"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_log = get_logger("api-openai")
_encode = msgspec.json.Encoder().encode
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _ClientGone(Exception):
    """The client disconnected while we were reading its request."""


class OpenAISurfaceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prefixes: list[str] = msgspec.field(default_factory=lambda: ["/v1", "/api/v1"])
    """Path prefixes the routes are served under."""


def _request_info(scope: Scope) -> RequestInfo:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    client = scope.get("client")
    return RequestInfo(
        method=scope["method"],
        path=scope.get("raw_path", b"").decode("latin-1") or scope["path"],
        headers=headers,
        client=client[0] if client else None,
        surface="openai",
        request_id=scope.get("sira.request_id", ""),
    )


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0
            if declared > limit:
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            break
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body = message.get("body", b"")
        if body:
            total += len(body)
            if total > limit:
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            chunks.append(body)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _headers(scope: Scope, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    headers = [_JSON, (b"x-request-id", scope.get("sira.request_id", "").encode())]
    if extra:
        headers.extend(extra)
    return headers


async def _send_json(scope: Scope, send: Send, status: int, body: bytes,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = _headers(scope, extra)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(scope: Scope, send: Send, exc: SiraError) -> None:
    extra = None
    if exc.retry_after is not None:
        extra = [(b"retry-after", str(max(1, round(exc.retry_after))).encode())]
    await _send_json(scope, send, exc.status, error_body(exc), extra)


async def _unless_disconnected(receive: Receive, call: Callable[[], Awaitable[Any]]) -> Any:
    """Await ``call()``; if the client disconnects first, cancel it (and the upstream call with it)."""
    gone = False
    error: Exception | None = None
    result: Any = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        try:
            result = await call()
        except Exception as exc:  # re-raised below, so it is not wrapped in an ExceptionGroup
            error = exc
        tg.cancel_scope.cancel()
    if gone:
        raise _ClientGone
    if error is not None:
        raise error
    return result


def _route_header(info: RequestInfo) -> list[tuple[bytes, bytes]] | None:
    """``x-sira-route: <provider>/<model>; attempts=<n>``: where the pipeline sent the request."""
    return None if info.route is None else [(b"x-sira-route", info.route.encode())]


class _Endpoint:
    """Base ASGI endpoint: bound to the plugin, which knows the running kernel."""

    def __init__(self, plugin: OpenAISurfacePlugin) -> None:
        self.plugin = plugin

    @property
    def kernel(self) -> Kernel:
        kernel = self.plugin.kernel
        assert kernel is not None
        return kernel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handle(scope, receive, send)
        except _ClientGone:
            return
        except SiraError as exc:
            await _send_error(scope, send, exc)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class ChatCompletions(_Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        kernel = self.kernel
        body = await _read_body(scope, receive, kernel.config.limits.max_body_bytes)
        request = decode_chat(body)
        info = _request_info(scope)
        if not request.stream:
            response = await _unless_disconnected(receive, lambda: kernel.pipeline.chat(request, info))
            await _send_json(scope, send, 200, _encode(response), _route_header(info))
            return
        stream = await _unless_disconnected(receive, lambda: kernel.pipeline.stream(request, info))
        await self._relay(scope, receive, send, stream, request.include_usage, _route_header(info))

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, stream: ChatStream, include_usage: bool,
        extra_headers: list[tuple[bytes, bytes]] | None,
    ) -> None:
        client_gone = False
        finished = False
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    nonlocal client_gone
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            # Servers also report a disconnect once the response is complete.
                            client_gone = not finished
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch_disconnect)
                failed = await self._write(scope, send, stream, include_usage, extra_headers)
                finished = True
                await send({"type": "http.response.body", "body": b"" if failed else DONE, "more_body": False})
                tg.cancel_scope.cancel()
        except OSError:
            client_gone = not finished  # the server could not write: the client is gone
        finally:
            await stream.aclose(client_gone=client_gone)

    @staticmethod
    async def _write(
        scope: Scope, send: Send, stream: ChatStream, include_usage: bool,
        extra_headers: list[tuple[bytes, bytes]] | None,
    ) -> bool:
        """Send the response head and every event; return True when the stream ended in an error."""
        events = stream.__aiter__()
        start = await events.__anext__()
        encoder = ChunkEncoder(start, include_usage)  # type: ignore[arg-type]
        headers = [*_SSE_HEADERS, (b"x-request-id", scope.get("sira.request_id", "").encode())]
        if extra_headers:
            headers.extend(extra_headers)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": encoder.first(), "more_body": True})
        try:
            async for event in events:
                line = encoder.encode(event)
                if line is not None:
                    await send({"type": "http.response.body", "body": line, "more_body": True})
                if isinstance(event, StreamError):
                    return True
        except SiraError as exc:
            error = StreamError(message=exc.message, status=exc.status, code=exc.code, error_type=exc.error_type)
            await send({"type": "http.response.body", "body": stream_error_line(error), "more_body": True})
            return True
        return False


class Embeddings(_Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        kernel = self.kernel
        body = await _read_body(scope, receive, kernel.config.limits.max_body_bytes)
        request = decode_embeddings(body)
        info = _request_info(scope)
        response = await _unless_disconnected(receive, lambda: kernel.pipeline.embed(request, info))
        await _send_json(scope, send, 200, _encode(response), _route_header(info))


def _model_entry(model: Any) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.owned_by}


class Models(_Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        models = await self.kernel.pipeline.models(_request_info(scope))
        wanted = scope.get("path_params", {}).get("model")
        if wanted is not None:
            for model in models:
                if model.id == wanted:
                    await _send_json(scope, send, 200, _encode(_model_entry(model)))
                    return
            raise ModelNotFound(f"the model {wanted!r} does not exist", param="model")
        body = {"object": "list", "data": [_model_entry(m) for m in models]}
        await _send_json(scope, send, 200, _encode(body))


class OpenAISurfacePlugin:
    """Registers the OpenAI-compatible routes on the public listener."""

    sira_api = 1
    Config = OpenAISurfaceConfig

    def __init__(self, config: OpenAISurfaceConfig) -> None:
        self.config = config
        self.kernel: Kernel | None = None

    @asynccontextmanager
    async def _lifespan(self, context: PluginContext) -> AsyncIterator[None]:
        self.kernel = context.kernel
        try:
            yield
        finally:
            self.kernel = None

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> Any:
        return self._lifespan(context)

    @hookimpl
    def sira_register_routes(self, register: RouteRegistrar) -> None:
        chat, embeddings, models = ChatCompletions(self), Embeddings(self), Models(self)
        for prefix in self.config.prefixes:
            prefix = prefix.rstrip("/")
            register(f"{prefix}/chat/completions", chat, methods=["POST"])
            register(f"{prefix}/embeddings", embeddings, methods=["POST"])
            register(f"{prefix}/models", models, methods=["GET"])
            register(f"{prefix}/models/{{model:path}}", models, methods=["GET"])
