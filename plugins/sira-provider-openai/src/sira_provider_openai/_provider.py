"""The provider adapter: chat, streamed chat and embeddings over one pooled upstream client.

The hot path does as little as it can per call: headers, URLs and timeout extensions are built
once; the body is encoded once with msgspec; responses decode straight into kernel structs. Deadlines
are enforced here with anyio cancel scopes (first token, total), never spanning a ``yield``, and
every exit path closes the upstream response so its connection goes back to the pool or is dropped.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal, cast

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

from . import _wire
from ._config import OpenAIConfig
from ._errors import sanitize, status_error, transport_error, upstream_message
from ._stream import StreamParser

__all__ = ["OpenAIProvider"]

USER_AGENT = "sira-provider-openai/0.1"
#: Azure deployment names: letters, digits, "-", "_" and "." (never "..": the name goes in the path).
_AZURE_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_BODY_WAIT = 5.0
#: After ``[DONE]``, read the rest of the body (the chunked terminator) for this long at most so the
#: connection can return to the pool instead of being closed.
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


class OpenAIProvider:
    """An OpenAI-compatible upstream as a kernel ``Provider``.

    ``name`` is the plugin instance id. :meth:`open` creates the pooled client and :meth:`aclose`
    closes it (the plugin's lifespan does both); ``async with provider:`` does the same for tests.
    """

    def __init__(self, name: str, config: OpenAIConfig) -> None:
        self.name = name
        self.config = config
        self.capabilities = Capabilities(
            chat=True,
            stream=True,
            tools=True,
            vision=True,
            embeddings=True,
            json_mode=True,
            passthrough_fields=config.passthrough_fields,
        )
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncBaseTransport | None = None
        self._base = config.base_url.rstrip("/")
        key = config.api_key.reveal() if config.api_key else None
        self._secrets = tuple(v for v in (key, *config.headers.values()) if v and len(v) >= 4)
        # identity: a gateway relays streams as they arrive and should not spend CPU inflating them.
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            "user-agent": USER_AGENT,
        }
        headers.update({k.lower(): v for k, v in config.headers.items()})
        if config.organization:
            headers["openai-organization"] = config.organization
        if config.project:
            headers["openai-project"] = config.project
        if key:
            if config.azure:
                headers["api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        self._json_headers = httpx.Headers({**headers, "accept": "application/json"})
        self._sse_headers = httpx.Headers({**headers, "accept": "text/event-stream"})
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._extensions: dict[float, dict[str, Any]] = {}
        self._discovered: list[str] = []
        self._models = self._model_infos()

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
            base_url=self._base,
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=None, pool=None),
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the upstream client and its connections."""
        client, self._client, self._transport = self._client, None, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> OpenAIProvider:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- models -------------------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Configured models, aliases (with their upstream names) and discovered models."""
        return self._models

    def _model_infos(self) -> list[ModelInfo]:
        config = self.config
        infos: dict[str, ModelInfo] = {}
        embedding = set(config.embedding_models)
        for model in config.models:
            infos.setdefault(model, ModelInfo(id=model, upstream=model))
        for model in config.embedding_models:
            infos.setdefault(model, ModelInfo(id=model, upstream=model, kind="embedding"))
        for alias, upstream in config.aliases.items():
            kind: Literal["chat", "embedding"] = "embedding" if upstream in embedding else "chat"
            infos[alias] = ModelInfo(id=alias, upstream=upstream, kind=kind)
        for model in self._discovered:
            kind = "embedding" if "embed" in model else "chat"  # a guess: /models does not say
            infos.setdefault(model, ModelInfo(id=model, upstream=model, kind=kind))
        return list(infos.values())

    async def discover(self, *, timeout: float = 10.0) -> list[str]:
        """Fetch ``GET /models`` and serve what it lists (besides the configured models)."""
        if self.config.azure:
            raise ProviderRejected("model discovery is not supported for Azure", provider=self.name)
        request = httpx.Request(
            "GET", self._url("models", ""), headers=self._json_headers, extensions=self._timeouts(timeout)
        )
        deadline = anyio.current_time() + timeout
        response = await self._send(request, deadline, "model list", timeout)
        try:
            if response.status_code >= 300:
                raise await self._status_error(response, deadline)
            body = await self._read(response, deadline, 16 * 1024 * 1024, timeout)
        finally:
            await _close(response)
        try:
            found = _wire.decode_models(body)
        except msgspec.DecodeError as exc:
            raise ProviderUnavailable(
                f"upstream sent an invalid model list: {exc}", provider=self.name
            ) from None
        self._discovered = found
        self._models = self._model_infos()
        return found

    # -- chat ---------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        """Complete ``request`` without streaming."""
        body = self._encode_chat(request, ctx, stream=False)
        http_request = httpx.Request(
            "POST",
            self._url("chat/completions", ctx.upstream_model),
            headers=self._json_headers,
            content=body,
            extensions=self._timeouts(self._connect_timeout(ctx)),
        )
        first, first_deadline, total, deadline = self._deadlines(ctx)
        response = await self._send(http_request, first_deadline, "response", first)
        try:
            if response.status_code >= 300:
                raise await self._status_error(response, deadline)
            data = await self._read(response, deadline, ctx.max_response_bytes, total)
        finally:
            await _close(response)
        return self._decode_completion(data)

    def _decode_completion(self, data: bytes) -> ChatResponse:
        try:
            return _wire.decode_chat(data)
        except msgspec.DecodeError as exc:
            raise self._invalid(data, "chat completion", exc) from None

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Stream ``request`` as typed events; errors after ``StreamStart`` become a ``StreamError``."""
        body = self._encode_chat(request, ctx, stream=True)
        http_request = httpx.Request(
            "POST",
            self._url("chat/completions", ctx.upstream_model),
            headers=self._sse_headers,
            content=body,
            extensions=self._timeouts(self._connect_timeout(ctx)),
        )
        first, first_deadline, total, deadline = self._deadlines(ctx)
        response = await self._send(http_request, first_deadline, "response", first)
        try:
            if response.status_code >= 300:
                raise await self._status_error(response, deadline)
            if "json" in response.headers.get("content-type", ""):
                # Some servers ignore "stream": true and answer with one JSON completion.
                completion = self._decode_completion(
                    await self._read(response, deadline, ctx.max_response_bytes, total)
                )
                yield StreamStart(completion.id, completion.model, completion.created)
                for event in _wire.response_events(completion):
                    yield event
                return
            parser = StreamParser(
                provider=self.name,
                secrets=self._secrets,
                fallback_id=ctx.request_id,
                fallback_model=ctx.upstream_model,
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
                            f"upstream sent no {what} within {waited:g}s", provider=self.name
                        )
                    if failure is not None:
                        break
                    if raw is None:
                        if not parser.done and not parser.finished:
                            failure = ProviderUnavailable(
                                "upstream closed the stream before it finished", provider=self.name
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

    async def _drain(self, chunks: AsyncIterator[bytes], deadline: float) -> None:
        drained = 0
        with anyio.CancelScope(deadline=min(deadline, anyio.current_time() + _DRAIN_WAIT)):
            with contextlib.suppress(Exception):
                async for raw in chunks:
                    drained += len(raw)
                    if drained > _DRAIN_LIMIT:
                        break

    # -- embeddings ---------------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        """Embed ``request.input`` with the upstream model ``ctx.upstream_model``."""
        try:
            body = _wire.encode_embeddings(
                request, model=ctx.upstream_model, passthrough=self.config.passthrough_fields
            )
        except (TypeError, msgspec.EncodeError) as exc:
            raise ProviderRejected(f"request cannot be encoded: {exc}", provider=self.name) from None
        http_request = httpx.Request(
            "POST",
            self._url("embeddings", ctx.upstream_model),
            headers=self._json_headers,
            content=body,
            extensions=self._timeouts(self._connect_timeout(ctx)),
        )
        first, first_deadline, total, deadline = self._deadlines(ctx)
        response = await self._send(http_request, first_deadline, "response", first)
        try:
            if response.status_code >= 300:
                raise await self._status_error(response, deadline)
            data = await self._read(response, deadline, ctx.max_response_bytes, total)
        finally:
            await _close(response)
        try:
            return _wire.decode_embeddings(data)
        except msgspec.DecodeError as exc:
            raise self._invalid(data, "embeddings response", exc) from None

    # -- plumbing -----------------------------------------------------------------------------------

    def _encode_chat(self, request: ChatRequest, ctx: CallContext, *, stream: bool) -> bytes:
        try:
            return _wire.encode_chat(
                request,
                model=ctx.upstream_model,
                stream=stream,
                force_usage=self.config.stream_usage,
                passthrough=self.config.passthrough_fields,
            )
        except (TypeError, msgspec.EncodeError) as exc:
            raise ProviderRejected(f"request cannot be encoded: {exc}", provider=self.name) from None

    def _url(self, endpoint: str, model: str) -> httpx.URL:
        """The upstream URL; only config and a validated deployment name go into it."""
        key = (endpoint, model if self.config.azure else "")
        url = self._urls.get(key)
        if url is not None:
            return url
        if not self.config.azure:
            url = httpx.URL(f"{self._base}/{endpoint}")
        else:
            if not _AZURE_DEPLOYMENT.fullmatch(model) or ".." in model:
                raise ProviderRejected(
                    f"{model[:100]!r} is not a valid Azure deployment name", provider=self.name, status=400
                )
            url = httpx.URL(
                f"{self._base}/openai/deployments/{model}/{endpoint}",
                params={"api-version": self.config.api_version},
            )
        if len(self._urls) < _CACHE_LIMIT:
            self._urls[key] = url
        return url

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
        now = anyio.current_time()
        end = now + total
        return first, min(now + first, end), total, end

    async def _send(
        self, request: httpx.Request, deadline: float, what: str, waited: float
    ) -> httpx.Response:
        transport = self._transport
        if transport is None:
            raise ProviderUnavailable(f"provider {self.name!r} is not started", provider=self.name)
        with anyio.CancelScope(deadline=deadline):
            try:
                # Straight to the client's own transport: AsyncClient.send() adds an auth flow, redirect
                # handling and cookie persistence to every call (about a third of the per-call cost
                # measured here), and upstream cookies must not be replayed across tenants anyway.
                return await transport.handle_async_request(request)
            except Exception as exc:  # any failure to reach the upstream is the upstream's
                raise transport_error(exc, provider=self.name, secrets=self._secrets) from exc
        raise ProviderTimeout(f"upstream sent no {what} within {waited:g}s", provider=self.name)

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
        raise ProviderTimeout(f"upstream sent no complete answer within {waited:g}s", provider=self.name)

    async def _status_error(self, response: httpx.Response, deadline: float) -> ProviderError:
        """The error for a non-2xx answer, quoting (a bounded read of) the upstream's error body."""
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
            return ProviderUnavailable(f"upstream answered an unexpected {status}", provider=self.name)
        return status_error(
            status, response.headers, body[:_ERROR_BODY_LIMIT], provider=self.name, secrets=self._secrets
        )

    def _too_large(self, limit: int) -> ProviderUnavailable:
        return ProviderUnavailable(f"upstream response is larger than {limit} bytes", provider=self.name)

    def _invalid(self, data: bytes, what: str, exc: Exception) -> ProviderUnavailable:
        text, _ = upstream_message(data[:_ERROR_BODY_LIMIT])
        if data[:1] == b"{" and b'"error"' in data[:_ERROR_BODY_LIMIT]:
            detail = f"upstream reported an error: {sanitize(text, self._secrets)}"
        else:
            detail = f"upstream sent an invalid {what}: {exc}"
        return ProviderUnavailable(detail, provider=self.name)
