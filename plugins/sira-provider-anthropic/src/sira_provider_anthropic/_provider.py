"""The provider adapter: chat and streamed chat over one pooled client to Anthropic's Messages API.

The hot path does little per call: headers, the URL and timeout extensions are built once, the body
is encoded once with msgspec, answers decode straight into small structs. Deadlines are anyio
cancel scopes (first token, total), never held across a ``yield``, and every exit path closes the
upstream response so its connection goes back to the pool or is dropped.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import anyio
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport
from sira_kernel.errors import ProviderError, ProviderRejected, ProviderTimeout, ProviderUnavailable
from sira_kernel.providers import CallContext, Capabilities
from sira_kernel.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    StreamError,
    StreamEvent,
    StreamStart,
)

from ._config import AnthropicConfig
from ._errors import ERROR_STATUS, error_for, sanitize, status_error, transport_error, upstream_error
from ._stream import StreamParser
from ._translate import UnsupportedRequest, encode_request
from ._wire import decode_message, response_events, to_chat_response

__all__ = ["AnthropicProvider"]

USER_AGENT = "sira-provider-anthropic/0.1"
_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_BODY_WAIT = 5.0
#: After ``message_stop``, read the rest of the body (the chunked terminator) for this long at most
#: so the connection can return to the pool instead of being closed.
_DRAIN_WAIT = 1.0
_DRAIN_LIMIT = 64 * 1024
_CACHE_LIMIT = 1024


def _body(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The response body as it arrives; decoded only if the upstream ignored ``identity``."""
    encoding = response.headers.get("content-encoding")
    chunks = response.aiter_bytes() if encoding and encoding != "identity" else response.aiter_raw()
    return cast("AsyncGenerator[bytes, None]", chunks)  # httpx annotates its async generators loosely


async def _close(response: httpx.Response) -> None:
    """Close ``response`` even while the caller is being cancelled; closing never raises."""
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await response.aclose()


class AnthropicProvider:
    """Anthropic's Messages API as a kernel ``Provider``.

    ``name`` is the plugin instance id. :meth:`open` creates the pooled client and :meth:`aclose`
    closes it (the plugin's lifespan does both); ``async with provider:`` does the same for tests.
    """

    def __init__(self, name: str, config: AnthropicConfig) -> None:
        self.name = name
        self.config = config
        self.capabilities = Capabilities(
            chat=True,
            stream=True,
            tools=True,
            vision=True,
            embeddings=False,
            json_mode=False,
            passthrough_fields=bool(config.passthrough_fields),
        )
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncBaseTransport | None = None
        self._url = httpx.URL(f"{config.base_url.rstrip('/')}/v1/messages")
        key = config.api_key.reveal() if config.api_key else None
        self._secrets = tuple(v for v in (key, *config.headers.values()) if v and len(v) >= 4)
        # identity: a gateway relays streams as they arrive and should not spend CPU inflating them.
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            "user-agent": USER_AGENT,
        }
        headers.update({k.lower(): v for k, v in config.headers.items()})
        headers["anthropic-version"] = config.anthropic_version
        if config.beta:
            headers["anthropic-beta"] = ",".join(config.beta)
        if key:
            headers["x-api-key"] = key
        self._json_headers = httpx.Headers({**headers, "accept": "application/json"})
        self._sse_headers = httpx.Headers({**headers, "accept": "text/event-stream"})
        self._extensions: dict[float, dict[str, Any]] = {}
        models: dict[str, ModelInfo] = {m: ModelInfo(id=m, upstream=m) for m in config.models}
        models.update(
            {alias: ModelInfo(id=alias, upstream=target) for alias, target in config.aliases.items()}
        )
        self._models = list(models.values())

    # -- lifecycle ----------------------------------------------------------------------------------

    async def open(self, *, connect_timeout: float = 10.0) -> None:
        """Create the pooled upstream client (idempotent)."""
        if self._client is not None:
            return
        config = self.config
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=config.ca_bundle) if config.ca_bundle else True
        )
        transport = AiohttpTransport(
            verify=verify,
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
                keepalive_expiry=config.keepalive_expiry,
            ),
            proxy=httpx.Proxy(config.proxy) if config.proxy else None,
        )
        self._transport = transport
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=None, pool=None),
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the upstream client and its connections."""
        client, self._client, self._transport = self._client, None, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> AnthropicProvider:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the Provider protocol ----------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Configured models and aliases (with their upstream names)."""
        return self._models

    async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        """Complete ``request`` without streaming."""
        http_request = self._request(request, ctx, stream=False)
        first, first_deadline, total, deadline = self._deadlines(ctx)
        response = await self._send(http_request, first_deadline, "response", first)
        try:
            if response.status_code >= 300:
                raise await self._status_error(response, deadline)
            data = await self._read(response, deadline, ctx.max_response_bytes, total)
        finally:
            await _close(response)
        return self._decode(data, ctx)

    def _decode(self, data: bytes, ctx: CallContext) -> ChatResponse:
        """The kernel response for a whole Messages answer; an error object sent with a 200 raises."""
        try:
            message = decode_message(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self._invalid(data, exc) from None
        if message.type == "error":
            raise self._invalid(data, None)
        return to_chat_response(message, fallback_id=ctx.request_id, fallback_model=ctx.upstream_model)

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Stream ``request`` as typed events; errors after ``StreamStart`` become a ``StreamError``."""
        http_request = self._request(request, ctx, stream=True)
        first, first_deadline, total, deadline = self._deadlines(ctx)
        response = await self._send(http_request, first_deadline, "response", first)
        try:
            if response.status_code >= 300:
                raise await self._status_error(response, deadline)
            if "json" in response.headers.get("content-type", ""):
                # A proxy that ignores "stream": true answers with one message: relay it as events.
                data = await self._read(response, deadline, ctx.max_response_bytes, total)
                completion = self._decode(data, ctx)
                yield StreamStart(completion.id, completion.model, completion.created)
                for event in response_events(completion):
                    yield event
                return
            parser = StreamParser(
                provider=self.name,
                secrets=self._secrets,
                fallback_id=ctx.request_id,
                fallback_model=ctx.upstream_model,
                created=int(time.time()),
            )
            failure: ProviderError | None = None
            limit = ctx.max_response_bytes
            received = 0
            read_deadline, waited, what = first_deadline, first, "first token"
            chunks = _body(response)
            try:
                while True:
                    raw: bytes | None = None
                    with anyio.CancelScope(deadline=read_deadline) as scope:
                        try:
                            raw = await chunks.__anext__()
                        except StopAsyncIteration:
                            pass
                        except Exception as exc:  # any failure to read from the upstream is the upstream's
                            failure = transport_error(exc, provider=self.name, secrets=self._secrets)
                    if scope.cancelled_caught:
                        failure = ProviderTimeout(
                            f"Anthropic sent no {what} within {waited:g}s", provider=self.name
                        )
                    if failure is not None:
                        break
                    if raw is None:  # the body ended
                        if parser.finished:
                            for event in parser.end():  # cut after message_delta: complete enough
                                yield event
                        else:
                            failure = ProviderUnavailable(
                                "Anthropic closed the stream before it finished", provider=self.name
                            )
                        break
                    received += len(raw)
                    if received > limit:
                        failure = self._too_large(limit)
                        break
                    events = parser.feed(raw)
                    if parser.started and read_deadline != deadline:
                        read_deadline, waited, what = deadline, total, "complete answer"
                    for event in events:
                        yield event
                    if parser.failure is not None:
                        failure = parser.failure
                        break
                    if parser.done:
                        await self._drain(chunks, deadline)
                        break
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await chunks.aclose()
            if failure is not None:
                if not parser.started:
                    raise failure
                yield StreamError(failure.message, failure.status, failure.code, failure.error_type)
        finally:
            await _close(response)

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        """Anthropic has no embeddings API: always ``ProviderRejected``."""
        raise ProviderRejected(
            "Anthropic has no embeddings API; route embedding models to another provider",
            provider=self.name,
            status=400,
            code="embeddings_not_supported",
        )

    # -- plumbing -----------------------------------------------------------------------------------

    def _request(self, request: ChatRequest, ctx: CallContext, *, stream: bool) -> httpx.Request:
        try:
            body = encode_request(request, model=ctx.upstream_model, stream=stream, config=self.config)
        except UnsupportedRequest as exc:
            raise ProviderRejected(str(exc), provider=self.name, status=400, param=exc.param) from None
        except (TypeError, msgspec.EncodeError) as exc:
            raise ProviderRejected(f"request cannot be encoded: {exc}", provider=self.name) from None
        return httpx.Request(
            "POST",
            self._url,
            headers=self._sse_headers if stream else self._json_headers,
            content=body,
            extensions=self._timeouts(self._connect_timeout(ctx)),
        )

    def _connect_timeout(self, ctx: CallContext) -> float:
        limit = self.config.connect_timeout
        return ctx.connect_timeout if limit is None else min(limit, ctx.connect_timeout)

    def _timeouts(self, connect: float) -> dict[str, Any]:
        """httpx request extensions carrying the connect timeout (other deadlines are ours)."""
        extensions = self._extensions.get(connect)
        if extensions is None:
            extensions = {"timeout": {"connect": connect, "read": None, "write": None, "pool": None}}
            if len(self._extensions) < _CACHE_LIMIT:
                self._extensions[connect] = extensions
        return extensions

    def _deadlines(self, ctx: CallContext) -> tuple[float, float, float, float]:
        """(first-token timeout, its deadline, total timeout, its deadline), config limits applied."""
        config = self.config
        first = ctx.first_token_timeout
        if config.first_token_timeout is not None:
            first = min(first, config.first_token_timeout)
        total = ctx.total_timeout
        if config.total_timeout is not None:
            total = min(total, config.total_timeout)
        first = min(first, total)  # so that a timeout names the deadline that really passed
        now = anyio.current_time()
        return first, now + first, total, now + total

    async def _send(
        self, request: httpx.Request, deadline: float, what: str, waited: float
    ) -> httpx.Response:
        transport = self._transport
        if transport is None:
            raise ProviderUnavailable(f"provider {self.name!r} is not started", provider=self.name)
        with anyio.CancelScope(deadline=deadline):
            try:
                # Straight to the client's transport: AsyncClient.send() adds auth, redirect and cookie
                # handling to every call, and upstream cookies must not be replayed across tenants.
                return await transport.handle_async_request(request)
            except Exception as exc:  # any failure to reach the upstream is the upstream's
                raise transport_error(exc, provider=self.name, secrets=self._secrets) from exc
        raise ProviderTimeout(f"Anthropic sent no {what} within {waited:g}s", provider=self.name)

    async def _read(self, response: httpx.Response, deadline: float, limit: int, waited: float) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large(limit)
        parts: list[bytes] = []
        size = 0
        with anyio.CancelScope(deadline=deadline):
            try:
                async with contextlib.aclosing(_body(response)) as chunks:
                    async for chunk in chunks:
                        size += len(chunk)
                        if size > limit:
                            raise self._too_large(limit)
                        parts.append(chunk)
            except ProviderError:
                raise
            except Exception as exc:  # any failure to read from the upstream is the upstream's
                raise transport_error(exc, provider=self.name, secrets=self._secrets) from exc
            return parts[0] if len(parts) == 1 else b"".join(parts)
        raise ProviderTimeout(f"Anthropic sent no complete answer within {waited:g}s", provider=self.name)

    async def _drain(self, chunks: AsyncIterator[bytes], deadline: float) -> None:
        drained = 0
        with anyio.CancelScope(deadline=min(deadline, anyio.current_time() + _DRAIN_WAIT)):
            with contextlib.suppress(Exception):
                async for raw in chunks:
                    drained += len(raw)
                    if drained > _DRAIN_LIMIT:
                        break

    async def _status_error(self, response: httpx.Response, deadline: float) -> ProviderError:
        """The error for a non-2xx answer, from (a bounded read of) Anthropic's error body."""
        status = response.status_code
        body = b""
        with anyio.CancelScope(deadline=min(deadline, anyio.current_time() + _ERROR_BODY_WAIT)):
            with contextlib.suppress(Exception):
                async with contextlib.aclosing(_body(response)) as chunks:
                    async for chunk in chunks:
                        body += chunk
                        if len(body) >= _ERROR_BODY_LIMIT:
                            break
        if status < 400:
            return ProviderUnavailable(f"Anthropic answered an unexpected {status}", provider=self.name)
        return status_error(
            status, response.headers, body[:_ERROR_BODY_LIMIT], provider=self.name, secrets=self._secrets
        )

    def _too_large(self, limit: int) -> ProviderUnavailable:
        return ProviderUnavailable(f"Anthropic's answer is larger than {limit} bytes", provider=self.name)

    def _invalid(self, data: bytes, exc: Exception | None) -> ProviderError:
        error_type, text = upstream_error(data[:_ERROR_BODY_LIMIT])
        if error_type is not None:  # an error object with a 200 status: as if sent with its own status
            status = ERROR_STATUS.get(error_type, 500)
            return error_for(error_type, status, sanitize(text, self._secrets), provider=self.name)
        return ProviderUnavailable(f"Anthropic sent an invalid message: {exc}", provider=self.name)
