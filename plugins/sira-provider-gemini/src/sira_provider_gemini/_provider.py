"""The provider adapter: chat, streamed chat and embeddings over one pooled Gemini API client.

Like the OpenAI adapter: headers and timeout extensions are built once, bodies are encoded once with
msgspec, calls go straight to the client's transport, deadlines are anyio cancel scopes (first token,
total) that never span a ``yield``, and every exit path closes the upstream response. The API key
travels only in the ``x-goog-api-key`` header, never in a URL.
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
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
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    StreamError,
    StreamEvent,
    Usage,
)

from ._config import GeminiConfig
from ._errors import blocked_prompt, google_error, sanitize, status_error, transport_error
from ._request import TranslationError, embedding_texts, encode_chat, encode_embeddings
from ._response import GenerateContentResponse, assemble, decode_response, decode_responses
from ._stream import StreamParser

__all__ = ["GeminiProvider"]

USER_AGENT = "sira-provider-gemini/0.1"
#: A model id that cannot change the URL: ``gemini-2.5-flash``, ``models/x``, ``tunedModels/x``.
_MODEL = re.compile(r"(?:(?:models|tunedModels)/)?[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_BODY_WAIT = 5.0
_CACHE_LIMIT = 1024
#: ``batchEmbedContents`` takes at most this many requests; longer inputs go in several calls.
EMBED_BATCH = 100
_MAX_MODEL_PAGES = 20
MODEL_PAGE_SIZE = 1000


class _Embedding(msgspec.Struct):
    values: list[float]


class _BatchEmbeddings(msgspec.Struct):
    embeddings: list[_Embedding]


class _Model(msgspec.Struct, rename="camel"):
    name: str
    supported_generation_methods: list[str] = msgspec.field(default_factory=list)


class _ModelPage(msgspec.Struct, rename="camel"):
    models: list[_Model] = msgspec.field(default_factory=list)
    next_page_token: str | None = None


_decode_embeddings = msgspec.json.Decoder(_BatchEmbeddings).decode
_decode_models = msgspec.json.Decoder(_ModelPage).decode


def _body(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The response body as it arrives; decoded only if the upstream ignored ``identity``."""
    encoding = response.headers.get("content-encoding")
    chunks = response.aiter_bytes() if encoding and encoding != "identity" else response.aiter_raw()
    return cast("AsyncGenerator[bytes, None]", chunks)  # httpx annotates its async generators loosely


async def _close(response: httpx.Response) -> None:
    """Close ``response`` even while the caller is being cancelled; closing never raises."""
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await response.aclose()


def _estimate_tokens(text: str) -> int:
    """Gemini reports no usage for embeddings: about four characters a token."""
    return max(1, math.ceil(len(text) / 4))


class GeminiProvider:
    """The Gemini API as a kernel ``Provider``.

    ``name`` is the plugin instance id. :meth:`open` creates the pooled client and :meth:`aclose`
    closes it (the plugin's lifespan does both); ``async with provider:`` does the same for tests.
    """

    def __init__(self, name: str, config: GeminiConfig) -> None:
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
        self._root = f"{config.base_url.rstrip('/')}/{config.api_version}"
        key = config.api_key.reveal() if config.api_key else None
        self._secrets = tuple(v for v in (key, *config.headers.values()) if v and len(v) >= 4)
        # identity: a gateway relays streams as they arrive and should not spend CPU inflating them.
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            "user-agent": USER_AGENT,
        }
        headers.update({k.lower(): v for k, v in config.headers.items()})
        if key:
            headers["x-goog-api-key"] = key
        self._json_headers = httpx.Headers({**headers, "accept": "application/json"})
        self._sse_headers = httpx.Headers({**headers, "accept": "text/event-stream"})
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._extensions: dict[float, dict[str, Any]] = {}
        self._discovered: list[ModelInfo] = []
        self._models = self._model_infos()

    # -- lifecycle ----------------------------------------------------------------------------------

    async def open(self, *, connect_timeout: float = 10.0) -> None:
        """Create the pooled upstream client (idempotent)."""
        if self._client is not None:
            return
        config = self.config
        transport = AiohttpTransport(
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
                keepalive_expiry=config.keepalive_expiry,
            ),
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

    async def __aenter__(self) -> GeminiProvider:
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
            infos.setdefault(model, ModelInfo(id=model, owned_by="google", upstream=model))
        for model in config.embedding_models:
            infos.setdefault(model, ModelInfo(id=model, owned_by="google", upstream=model, kind="embedding"))
        for alias, upstream in config.aliases.items():
            kind: Literal["chat", "embedding"] = "embedding" if upstream in embedding else "chat"
            infos[alias] = ModelInfo(id=alias, owned_by="google", upstream=upstream, kind=kind)
        for info in self._discovered:
            infos.setdefault(info.id, info)
        return list(infos.values())

    async def discover(self, *, timeout: float = 10.0) -> list[str]:
        """List ``GET /{api_version}/models`` (every page) and serve the chat and embedding models in it."""
        deadline = anyio.current_time() + timeout
        found: list[ModelInfo] = []
        token: str | None = None
        for _ in range(_MAX_MODEL_PAGES):
            params = {"pageSize": str(MODEL_PAGE_SIZE), **({"pageToken": token} if token else {})}
            url = httpx.URL(f"{self._root}/models", params=params)
            request = httpx.Request(
                "GET", url, headers=self._json_headers, extensions=self._timeouts(timeout)
            )
            response = await self._send(request, deadline, "model list", timeout)
            try:
                if response.status_code >= 300:
                    raise await self._status_error(response, deadline)
                body = await self._read(response, deadline, 16 * 1024 * 1024, timeout)
            finally:
                await _close(response)
            try:
                page = _decode_models(body)
            except msgspec.DecodeError as exc:
                raise ProviderUnavailable(
                    f"upstream sent an invalid model list: {exc}", provider=self.name
                ) from None
            for model in page.models:
                name = model.name.removeprefix("models/")
                methods = set(model.supported_generation_methods)
                if "generateContent" in methods:
                    found.append(ModelInfo(id=name, owned_by="google", upstream=name))
                elif "embedContent" in methods:
                    found.append(ModelInfo(id=name, owned_by="google", upstream=name, kind="embedding"))
            token = page.next_page_token
            if not token:
                break
        self._discovered = found
        self._models = self._model_infos()
        return [info.id for info in found]

    # -- chat ---------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        """Complete ``request`` without streaming."""
        created = int(time.time())
        http_request = httpx.Request(
            "POST",
            self._url(ctx.upstream_model, "generateContent"),
            headers=self._json_headers,
            content=self._encode_chat(request),
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
        answer = self._decode(data, "response", decode_response)
        self._check(answer)
        return assemble(
            answer, fallback_id=ctx.request_id, fallback_model=ctx.upstream_model, created=created
        )

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Stream ``request`` as typed events; errors after ``StreamStart`` become a ``StreamError``."""
        parser = StreamParser(
            provider=self.name,
            secrets=self._secrets,
            fallback_id=ctx.request_id,
            fallback_model=ctx.upstream_model,
            created=int(time.time()),
        )
        http_request = httpx.Request(
            "POST",
            self._url(ctx.upstream_model, "streamGenerateContent"),
            headers=self._sse_headers,
            content=self._encode_chat(request),
            extensions=self._timeouts(self._connect_timeout(ctx)),
        )
        first, first_deadline, total, deadline = self._deadlines(ctx)
        response = await self._send(http_request, first_deadline, "response", first)
        try:
            if response.status_code >= 300:
                raise await self._status_error(response, deadline)
            if "json" in response.headers.get("content-type", ""):
                # A JSON answer to a stream request: an array of responses (the non-SSE stream format) or
                # a single one. Turned into the same events.
                data = await self._read(response, deadline, ctx.max_response_bytes, total)
                events: list[StreamEvent] = []
                for answer in self._decode_any(data):
                    if not parser.accept(answer, events):
                        break
                events += parser.end()
                if parser.failure is not None and not parser.started:
                    raise parser.failure
                for event in events:
                    yield event
                if parser.failure is not None:
                    yield self._stream_error(parser.failure)
                return
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
                        for event in parser.end():
                            yield event
                        failure = parser.failure
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
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await chunks.aclose()
            if failure is not None:
                if not parser.started:
                    raise failure
                yield self._stream_error(failure)
        finally:
            await _close(response)

    @staticmethod
    def _stream_error(failure: ProviderError) -> StreamError:
        return StreamError(failure.message, failure.status, failure.code, failure.error_type)

    # -- embeddings ---------------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        """Embed ``request.input`` with ``batchEmbedContents`` (in batches of :data:`EMBED_BATCH`)."""
        try:
            texts = embedding_texts(request)
        except TranslationError as exc:
            raise ProviderRejected(str(exc), provider=self.name, param=exc.param) from None
        url = self._url(ctx.upstream_model, "batchEmbedContents")
        model = ctx.upstream_model if "/" in ctx.upstream_model else f"models/{ctx.upstream_model}"
        first, _, total, deadline = self._deadlines(ctx)
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            batch = texts[start : start + EMBED_BATCH]
            body = encode_embeddings(batch, request, model=model, passthrough=self.config.passthrough_fields)
            vectors += await self._embed_batch(url, body, len(batch), ctx, first, total, deadline)
        if request.encoding_format == "base64":
            embeddings: Sequence[list[float] | str] = [
                base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors
            ]
        else:
            embeddings = vectors
        tokens = sum(_estimate_tokens(text) for text in texts)
        return EmbeddingResponse(
            data=[EmbeddingData(index=i, embedding=e) for i, e in enumerate(embeddings)],
            model=ctx.upstream_model,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def _embed_batch(
        self,
        url: httpx.URL,
        body: bytes,
        expected: int,
        ctx: CallContext,
        first: float,
        total: float,
        deadline: float,
    ) -> list[list[float]]:
        http_request = httpx.Request(
            "POST",
            url,
            headers=self._json_headers,
            content=body,
            extensions=self._timeouts(self._connect_timeout(ctx)),
        )
        first_deadline = min(anyio.current_time() + first, deadline)
        response = await self._send(http_request, first_deadline, "response", first)
        try:
            if response.status_code >= 300:
                raise await self._status_error(response, deadline)
            data = await self._read(response, deadline, ctx.max_response_bytes, total)
        finally:
            await _close(response)
        answer = self._decode(data, "embeddings response", _decode_embeddings)
        if len(answer.embeddings) != expected:
            raise ProviderUnavailable(
                f"upstream sent {len(answer.embeddings)} embeddings for {expected} inputs", provider=self.name
            )
        return [embedding.values for embedding in answer.embeddings]

    # -- plumbing -----------------------------------------------------------------------------------

    def _encode_chat(self, request: ChatRequest) -> bytes:
        try:
            return encode_chat(request, self.config)
        except TranslationError as exc:
            raise ProviderRejected(str(exc), provider=self.name, param=exc.param) from None
        except (TypeError, msgspec.EncodeError) as exc:
            raise ProviderRejected(f"request cannot be encoded: {exc}", provider=self.name) from None

    def _check(self, answer: GenerateContentResponse) -> None:
        """Raise for an error object or a refused prompt in a 200 answer."""
        if answer.error is not None:
            code = answer.error.get("code") if isinstance(answer.error, dict) else None
            status = code if isinstance(code, int) and code >= 400 else 502
            raise status_error(status, {}, answer.error, provider=self.name, secrets=self._secrets)
        reason = answer.block_reason
        if reason is not None:
            detail = answer.prompt_feedback.block_reason_message if answer.prompt_feedback else None
            raise blocked_prompt(reason, detail, provider=self.name)
        if not answer.candidates:
            raise ProviderUnavailable("upstream sent no candidates", provider=self.name)

    def _decode_any(self, data: bytes) -> list[GenerateContentResponse]:
        if data.lstrip()[:1] == b"[":
            answers: list[GenerateContentResponse] = self._decode(data, "response", decode_responses)
            return answers
        return [self._decode(data, "response", decode_response)]

    def _decode(self, data: bytes, what: str, decoder: Any) -> Any:
        try:
            return decoder(data)
        except msgspec.DecodeError as exc:
            if data[:1] in (b"{", b"[") and b'"error"' in data[:_ERROR_BODY_LIMIT]:
                error = google_error(data[:_ERROR_BODY_LIMIT])
                detail = f"upstream reported an error: {sanitize(error.message, self._secrets)}"
            else:
                detail = f"upstream sent an invalid {what}: {exc}"
            raise ProviderUnavailable(detail, provider=self.name) from None

    def _url(self, model: str, method: str) -> httpx.URL:
        """The upstream URL; only config and a validated model name go into it (never the key)."""
        key = (model, method)
        url = self._urls.get(key)
        if url is not None:
            return url
        if not _MODEL.fullmatch(model) or ".." in model:
            raise ProviderRejected(
                f"{model[:100]!r} is not a valid Gemini model name", provider=self.name, status=400
            )
        path = model if "/" in model else f"models/{model}"
        params = {"alt": "sse"} if method == "streamGenerateContent" else None
        url = httpx.URL(f"{self._root}/{path}:{method}", params=params)
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
                # handling and cookie persistence to every call, and upstream cookies must not be
                # replayed across tenants anyway.
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
        """The error for a non-2xx answer, quoting (a bounded read of) Google's error body."""
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
