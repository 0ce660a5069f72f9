"""The plugin and its two raw ASGI endpoints: ``POST {prefix}/messages`` and ``.../count_tokens``."""

from __future__ import annotations

import msgspec
from sira_kernel import (
    ChatRequest,
    ChatStream,
    ProviderError,
    RequestInfo,
    SiraError,
    StreamError,
    StreamEvent,
    StreamStart,
    hookimpl,
)
from sira_kernel.accounting import TokenCounter
from sira_kernel.logs import get_logger
from sira_kernel.registrations import RouteRegistrar
from sira_kernel.surface import (
    Endpoint,
    Receive,
    Scope,
    Send,
    SurfacePlugin,
    relay_stream,
    request_id_header,
    request_info,
    retry_after_headers,
    route_header,
    send_json,
    start_event_stream,
    unless_disconnected,
)

from ._request import decode_messages
from ._response import encode_message, error_body, error_status
from ._stream import EventEncoder
from ._tokens import count_input_tokens

__all__ = ["AnthropicSurfaceConfig", "AnthropicSurfacePlugin"]

_log = get_logger("api-anthropic")
_encode = msgspec.json.Encoder().encode


class AnthropicSurfaceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[plugins.api-anthropic]`` section of kernel.toml."""

    prefixes: list[str] = msgspec.field(default_factory=lambda: ["/v1"])
    """Path prefixes the routes are served under (the ``anthropic`` SDK's base URL is the part
    before ``/v1``)."""
    cache_control: bool = True
    """Keep Anthropic's prompt-caching marks (``cache_control``) on content parts and tools, for
    providers that honour them (``provider-anthropic``). Turn off when every upstream is an
    OpenAI-compatible server that refuses unknown keys in messages."""


async def _send_json(
    scope: Scope, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """``send_json`` with the request id under Anthropic's name too (the SDK reads ``request-id``)."""
    await send_json(scope, send, status, body, [request_id_header(scope, b"request-id"), *(headers or ())])


class _Endpoint(Endpoint["AnthropicSurfacePlugin"]):
    """Answers errors in Anthropic's shape, and a bug before the response started with a 500 in it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except OSError:
            return  # writing the answer failed: the client is gone
        except Exception:
            # A bug (here, in a plugin or a provider) before the response started: answer in
            # Anthropic's shape rather than with the server's plain-text 500.
            _log.exception("api_anthropic.internal_error")
            await self.send_error(scope, send, SiraError("internal error"))

    async def send_error(self, scope: Scope, send: Send, exc: SiraError) -> None:
        status, error_type = error_status(exc.status)
        headers = retry_after_headers(exc)
        if isinstance(exc, ProviderError) and not exc.retryable:
            headers.append((b"x-should-retry", b"false"))  # the SDK would otherwise retry a 5xx
        body = error_body(error_type, exc.message, scope.get("sira.request_id", ""))
        await _send_json(scope, send, status, body, headers)


class Messages(_Endpoint):
    """``POST /v1/messages``: one message, whole or streamed."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        kernel = self.kernel
        body = await self.read_body(scope, receive)
        request = decode_messages(body, cache_control=self.plugin.config.cache_control)
        info = request_info(scope, "anthropic")
        if not request.stream:
            response = await unless_disconnected(receive, lambda: kernel.pipeline.chat(request, info))
            await _send_json(scope, send, 200, encode_message(response), route_header(info))
            return
        stream = await unless_disconnected(receive, lambda: kernel.pipeline.stream(request, info))
        await relay_stream(receive, send, stream, self._write, scope, send, stream, request, info)

    @staticmethod
    async def _write(scope: Scope, send: Send, stream: ChatStream, request: ChatRequest, info: RequestInfo) -> bytes:
        """Send the head and every event; return the bytes that end the stream.

        The events that arrived from the upstream together go out in one body message (one write).
        """
        request_id = scope.get("sira.request_id", "")
        batches = stream.batches()
        first = await batches.__anext__()
        start = first[0] if isinstance(first[0], StreamStart) else StreamStart(id=request_id, model=request.model)
        encoder = EventEncoder(start)
        await start_event_stream(scope, send, [request_id_header(scope, b"request-id"), *(route_header(info) or ())])
        data, ended = _encode_batch(encoder, first[1:] if first[0] is start else first, request_id)
        if ended:
            return encoder.start() + data
        await send({"type": "http.response.body", "body": encoder.start() + data, "more_body": True})
        with stream.guard() as guard:
            try:
                async for batch in batches:
                    data, ended = _encode_batch(encoder, batch, request_id)
                    if ended:
                        return data
                    if data:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
            except SiraError as exc:
                return encoder.error(exc.stream_event(), request_id)
            except OSError:
                raise
            except Exception:
                _log.exception("api_anthropic.stream_failed")
                return encoder.error(StreamError(message="internal error", status=500), request_id)
        if guard.cancelled_caught:  # deadline passed, or the provider was unloaded past its drain timeout
            return encoder.error(stream.interrupted(), request_id)
        return encoder.finish()


def _encode_batch(encoder: EventEncoder, batch: list[StreamEvent], request_id: str) -> tuple[bytes, bool]:
    """The SSE bytes of ``batch`` and whether it ended the stream (a ``StreamError``, always last)."""
    if batch and isinstance(batch[-1], StreamError):
        return b"".join([*map(encoder.encode, batch[:-1]), encoder.error(batch[-1], request_id)]), True
    if len(batch) == 1:
        return encoder.encode(batch[0]), False
    return b"".join(map(encoder.encode, batch)), False


class CountTokens(_Endpoint):
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}`` for a Messages body."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        kernel = self.kernel
        body = await self.read_body(scope, receive)
        request = decode_messages(body, count_only=True, cache_control=self.plugin.config.cache_control)
        info = request_info(scope, "anthropic")

        async def count() -> int:
            snap = kernel.snapshot
            pipeline = kernel.pipeline
            principal = await pipeline.authenticate(snap, info)
            await pipeline.authorize(snap, principal, info, "count_tokens", request.model)
            route = await pipeline.route(snap, request, principal, info)  # an unknown model is a 404, as upstream
            counter = kernel.services.find(TokenCounter)
            return count_input_tokens(counter, request, route.deployments[0])

        tokens = await unless_disconnected(receive, count)
        await _send_json(scope, send, 200, _encode({"input_tokens": tokens}))


class AnthropicSurfacePlugin(SurfacePlugin[AnthropicSurfaceConfig]):
    """Registers the Anthropic-compatible routes on the public listener."""

    sira_api = 1
    Config = AnthropicSurfaceConfig

    @hookimpl
    def sira_register_routes(self, register: RouteRegistrar) -> None:
        messages, count_tokens = Messages(self), CountTokens(self)
        for prefix in self.config.prefixes:
            prefix = prefix.rstrip("/")
            register(f"{prefix}/messages", messages, methods=["POST"])
            register(f"{prefix}/messages/count_tokens", count_tokens, methods=["POST"])
