"""The provider adapter: chat, streamed chat and embeddings over one pooled Gemini API client.

Headers and timeout extensions are built once, bodies are encoded once with msgspec, and the exchange
itself (deadlines, bounded reads, streams, closing responses, transport errors) is
:class:`sira_kernel.upstream.Upstream`'s; this module knows Gemini's URLs, bodies and answers. The
API key travels only in the ``x-goog-api-key`` header, never in a URL.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import httpx
import msgspec
from sira_kernel.errors import ProviderRejected, ProviderUnavailable
from sira_kernel.providers import CallContext, Capabilities
from sira_kernel.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    StreamEvent,
    Usage,
)
from sira_kernel.upstream import (
    ERROR_BODY_LIMIT,
    Upstream,
    UpstreamProvider,
    request_headers,
    sanitize,
    served_models,
)

from ._config import GeminiConfig
from ._errors import blocked_prompt, google_error, status_error
from ._request import TranslationError, embedding_texts, encode_chat, encode_embeddings
from ._response import GenerateContentResponse, assemble, decode_response, decode_responses
from ._stream import StreamParser

__all__ = ["GeminiProvider"]

USER_AGENT = "sira-provider-gemini/0.1"
#: A model id that cannot change the URL: ``gemini-2.5-flash``, ``models/x``, ``tunedModels/x``.
_MODEL = re.compile(r"(?:(?:models|tunedModels)/)?[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_CACHE_LIMIT = 1024
#: ``batchEmbedContents`` takes at most this many requests; longer inputs go in several calls.
EMBED_BATCH = 100
_MAX_MODEL_PAGES = 20
MODEL_PAGE_SIZE = 1000
_MODEL_LIST_LIMIT = 16 * 1024 * 1024


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


def _estimate_tokens(text: str) -> int:
    """Gemini reports no usage for embeddings: about four characters a token."""
    return max(1, math.ceil(len(text) / 4))


class GeminiProvider(UpstreamProvider):
    """The Gemini API as a kernel ``Provider``; ``name`` is the plugin instance id."""

    def __init__(self, name: str, config: GeminiConfig) -> None:
        self.name = name
        self.config = config
        self.capabilities = Capabilities(
            vision=True, embeddings=True, passthrough_fields=config.passthrough_fields
        )
        self._root = f"{config.base_url.rstrip('/')}/{config.api_version}"
        key = config.api_key.reveal() if config.api_key else None
        self.upstream = Upstream(
            self, config, secrets=(key, *config.headers.values()), status_error=status_error
        )
        own = {"x-goog-api-key": key} if key else {}
        self._json_headers, self._sse_headers = request_headers(USER_AGENT, config.headers, own)
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._discovered: list[ModelInfo] = []
        self._models = self._model_infos()

    # -- models -------------------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Configured models, aliases (with their upstream names) and discovered models."""
        return self._models

    def _model_infos(self) -> list[ModelInfo]:
        config = self.config
        return served_models(config.models, config.aliases, embedding_models=config.embedding_models,
                             discovered=self._discovered, owned_by="google")

    async def discover(self, *, timeout: float = 10.0) -> list[str]:
        """List ``GET /{api_version}/models`` (every page) and serve the chat and embedding models in it."""
        upstream = self.upstream
        deadlines = upstream.deadlines_within(timeout)
        found: list[ModelInfo] = []
        token: str | None = None
        for _ in range(_MAX_MODEL_PAGES):
            params = {"pageSize": str(MODEL_PAGE_SIZE), **({"pageToken": token} if token else {})}
            url = httpx.URL(f"{self._root}/models", params=params)
            request = httpx.Request(
                "GET", url, headers=self._json_headers, extensions=upstream.extensions_for(timeout)
            )
            body = await upstream.fetch(request, deadlines, _MODEL_LIST_LIMIT, what="model list")
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
        upstream = self.upstream
        http_request = upstream.post(
            self._url(ctx.upstream_model, "generateContent"),
            self._json_headers,
            self._encode_chat(request),
            ctx,
        )
        data = await upstream.fetch(http_request, upstream.deadlines(ctx), ctx.max_response_bytes)
        answer = self._decode(data, "response", decode_response)
        self._check(answer)
        return assemble(
            answer, fallback_id=ctx.request_id, fallback_model=ctx.upstream_model, created=created
        )

    def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Stream ``request`` as typed events; errors after ``StreamStart`` become a ``StreamError``."""
        return self.upstream.stream(self, request, ctx)

    def stream_request(self, request: ChatRequest, ctx: CallContext) -> httpx.Request:
        """The upstream request of a streamed chat (``sira_kernel.upstream.StreamCodec``)."""
        return self.upstream.post(
            self._url(ctx.upstream_model, "streamGenerateContent"),
            self._sse_headers,
            self._encode_chat(request),
            ctx,
        )

    def stream_parser(self, ctx: CallContext) -> StreamParser:
        """A parser for one ``streamGenerateContent?alt=sse`` stream."""
        return StreamParser(
            provider=self.name,
            secrets=self.upstream.secrets,
            fallback_id=ctx.request_id,
            fallback_model=ctx.upstream_model,
            created=int(time.time()),
        )

    def stream_json(self, data: bytes, ctx: CallContext, parser: StreamParser) -> list[StreamEvent]:
        """A JSON answer to a stream request (an array of responses, the non-SSE stream format, or a
        single one): the same events, through the same parser."""
        events: list[StreamEvent] = []
        for answer in self._decode_any(data):
            if not parser.accept(answer, events):
                break
        events += parser.end()
        return events

    # -- embeddings ---------------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        """Embed ``request.input`` with ``batchEmbedContents`` (in batches of :data:`EMBED_BATCH`)."""
        try:
            texts = embedding_texts(request)
        except TranslationError as exc:
            raise ProviderRejected(str(exc), provider=self.name, param=exc.param) from None
        url = self._url(ctx.upstream_model, "batchEmbedContents")
        model = ctx.upstream_model if "/" in ctx.upstream_model else f"models/{ctx.upstream_model}"
        first, _, total, deadline = self.upstream.deadlines(ctx)
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
        upstream = self.upstream
        http_request = upstream.post(url, self._json_headers, body, ctx)
        deadlines = (first, min(anyio.current_time() + first, deadline), total, deadline)
        data = await upstream.fetch(http_request, deadlines, ctx.max_response_bytes)
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
            raise status_error(status, {}, answer.error, provider=self.name, secrets=self.upstream.secrets)
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
            if data[:1] in (b"{", b"[") and b'"error"' in data[:ERROR_BODY_LIMIT]:
                error = google_error(data[:ERROR_BODY_LIMIT])
                detail = f"upstream reported an error: {sanitize(error.message, self.upstream.secrets)}"
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
