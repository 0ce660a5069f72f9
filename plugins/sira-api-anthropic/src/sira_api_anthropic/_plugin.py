"""The plugin and its two raw ASGI endpoints: ``POST {prefix}/messages`` and ``.../count_tokens``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from sira_kernel import (
    ChatRequest,
    ChatStream,
    Kernel,
    PluginContext,
    ProviderError,
    RequestInfo,
    SiraError,
    StreamError,
    StreamStart,
    hookimpl,
)
from sira_kernel.accounting import TokenCounter
from sira_kernel.logs import get_logger
from sira_kernel.registrations import RouteRegistrar

from ._asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    read_body,
    request_id_headers,
    request_info,
    send_json,
    unless_disconnected,
)
from ._request import decode_messages
from ._response import encode_message, error_body, error_status
from ._stream import EventEncoder
from ._tokens import count_input_tokens

__all__ = ["AnthropicSurfaceConfig", "AnthropicSurfacePlugin"]

_log = get_logger("api-anthropic")
_encode = msgspec.json.Encoder().encode
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class AnthropicSurfaceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[plugins.api-anthropic]`` section of kernel.toml."""

    prefixes: list[str] = msgspec.field(default_factory=lambda: ["/v1"])
    """Path prefixes the routes are served under (the ``anthropic`` SDK's base URL is the part
    before ``/v1``)."""
    cache_control: bool = True
    """Keep Anthropic's prompt-caching marks (``cache_control``) on content parts and tools, for
    providers that honour them (``provider-anthropic``). Turn off when every upstream is an
    OpenAI-compatible server that refuses unknown keys in messages."""


async def _send_error(scope: Scope, send: Send, exc: SiraError) -> None:
    status, error_type = error_status(exc.status)
    extra = []
    if exc.retry_after is not None:
        extra.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
    if isinstance(exc, ProviderError) and not exc.retryable:
        extra.append((b"x-should-retry", b"false"))  # the SDK would otherwise retry a 5xx
    body = error_body(error_type, exc.message, scope.get("sira.request_id", ""))
    await send_json(scope, send, status, body, extra)


def _route_header(info: RequestInfo) -> list[tuple[bytes, bytes]] | None:
    """``x-sira-route: <provider>/<model>; attempts=<n>``: where the pipeline sent the request."""
    return None if info.route is None else [(b"x-sira-route", info.route.encode())]


class _Endpoint:
    """Base ASGI endpoint: bound to the plugin, which knows the running kernel."""

    def __init__(self, plugin: AnthropicSurfacePlugin) -> None:
        self.plugin = plugin

    @property
    def kernel(self) -> Kernel:
        kernel = self.plugin.kernel
        assert kernel is not None
        return kernel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handle(scope, receive, send)
        except ClientGone:
            return
        except SiraError as exc:
            await _send_error(scope, send, exc)
        except OSError:
            return  # writing the answer failed: the client is gone
        except Exception:
            # A bug (here, in a plugin or a provider) before the response started: answer in
            # Anthropic's shape rather than with the server's plain-text 500.
            _log.exception("api_anthropic.internal_error")
            await _send_error(scope, send, SiraError("internal error"))

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class Messages(_Endpoint):
    """``POST /v1/messages``: one message, whole or streamed."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        kernel = self.kernel
        body = await read_body(scope, receive, kernel.config.limits.max_body_bytes)
        request = decode_messages(body, cache_control=self.plugin.config.cache_control)
        info = request_info(scope)
        if not request.stream:
            response = await unless_disconnected(receive, lambda: kernel.pipeline.chat(request, info))
            await send_json(scope, send, 200, encode_message(response), _route_header(info))
            return
        stream = await unless_disconnected(receive, lambda: kernel.pipeline.stream(request, info))
        await self._relay(scope, receive, send, stream, request, info)

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, stream: ChatStream, request: ChatRequest, info: RequestInfo
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
                try:
                    last = await self._write(scope, send, stream, request, info)
                    finished = True
                    await send({"type": "http.response.body", "body": last, "more_body": False})
                except OSError:  # the server could not write: the client is gone
                    client_gone = not finished
                tg.cancel_scope.cancel()
        finally:
            await stream.aclose(client_gone=client_gone)

    @staticmethod
    async def _write(scope: Scope, send: Send, stream: ChatStream, request: ChatRequest, info: RequestInfo) -> bytes:
        """Send the head and every event; return the bytes that end the stream."""
        request_id = scope.get("sira.request_id", "")
        events = stream.__aiter__()
        first = await events.__anext__()
        start = first if isinstance(first, StreamStart) else StreamStart(id=request_id, model=request.model)
        encoder = EventEncoder(start)
        headers = [*_SSE_HEADERS, *request_id_headers(scope), *(_route_header(info) or ())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        head = encoder.start() if first is start else encoder.start() + encoder.encode(first)
        await send({"type": "http.response.body", "body": head, "more_body": True})
        try:
            async for event in events:
                if isinstance(event, StreamError):
                    return encoder.error(event, request_id)
                data = encoder.encode(event)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        except SiraError as exc:
            error = StreamError(message=exc.message, status=exc.status, code=exc.code, error_type=exc.error_type)
            return encoder.error(error, request_id)
        except OSError:
            raise
        except Exception:
            _log.exception("api_anthropic.stream_failed")
            return encoder.error(StreamError(message="internal error", status=500), request_id)
        return encoder.finish()


class CountTokens(_Endpoint):
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}`` for a Messages body."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        kernel = self.kernel
        body = await read_body(scope, receive, kernel.config.limits.max_body_bytes)
        request = decode_messages(body, count_only=True, cache_control=self.plugin.config.cache_control)
        info = request_info(scope)

        async def count() -> int:
            snap = kernel.snapshot
            pipeline = kernel.pipeline
            principal = await pipeline.authenticate(snap, info)
            await pipeline.authorize(snap, principal, info, "count_tokens", request.model)
            route = await pipeline.route(snap, request, principal)  # an unknown model is a 404, as upstream
            counter = kernel.services.find(TokenCounter)
            return count_input_tokens(counter, request, route.deployments[0])

        tokens = await unless_disconnected(receive, count)
        await send_json(scope, send, 200, _encode({"input_tokens": tokens}))


class AnthropicSurfacePlugin:
    """Registers the Anthropic-compatible routes on the public listener."""

    sira_api = 1
    Config = AnthropicSurfaceConfig

    def __init__(self, config: AnthropicSurfaceConfig) -> None:
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
        messages, count_tokens = Messages(self), CountTokens(self)
        for prefix in self.config.prefixes:
            prefix = prefix.rstrip("/")
            register(f"{prefix}/messages", messages, methods=["POST"])
            register(f"{prefix}/messages/count_tokens", count_tokens, methods=["POST"])
