"""The provider adapter: chat, streamed chat and embeddings over one pooled upstream client.

The hot path does as little as it can per call: headers, URLs and timeout extensions are built
once; the body is encoded once with msgspec; responses decode straight into kernel structs. The
exchange itself (deadlines, bounded reads, streams, closing responses, transport errors) is
:class:`sira_kernel.upstream.Upstream`'s; this module knows OpenAI's URLs, bodies and answers.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import msgspec
from sira_kernel.errors import ProviderRejected, ProviderUnavailable
from sira_kernel.providers import CallContext, Capabilities
from sira_kernel.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    StreamEvent,
    StreamStart,
)
from sira_kernel.upstream import (
    ERROR_BODY_LIMIT,
    Upstream,
    UpstreamProvider,
    request_headers,
    sanitize,
    served_models,
)

from . import _wire
from ._config import OpenAIConfig
from ._errors import status_error, upstream_message
from ._stream import StreamParser

__all__ = ["OpenAIProvider"]

USER_AGENT = "sira-provider-openai/0.1"
#: Azure deployment names: letters, digits, "-", "_" and "." (never "..": the name goes in the path).
_AZURE_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_CACHE_LIMIT = 1024
_MODEL_LIST_LIMIT = 16 * 1024 * 1024


class OpenAIProvider(UpstreamProvider):
    """An OpenAI-compatible upstream as a kernel ``Provider``; ``name`` is the plugin instance id."""

    def __init__(self, name: str, config: OpenAIConfig) -> None:
        self.name = name
        self.config = config
        self.capabilities = Capabilities(
            vision=True, embeddings=True, passthrough_fields=config.passthrough_fields
        )
        self._base = config.base_url.rstrip("/")
        key = config.api_key.reveal() if config.api_key else None
        self.upstream = Upstream(
            self, config, secrets=(key, *config.headers.values()), status_error=status_error
        )
        own: dict[str, str] = {}
        if config.organization:
            own["openai-organization"] = config.organization
        if config.project:
            own["openai-project"] = config.project
        if key and config.azure:
            own["api-key"] = key
        elif key:
            own["authorization"] = f"Bearer {key}"
        self._json_headers, self._sse_headers = request_headers(USER_AGENT, config.headers, own)
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._discovered: list[str] = []
        self._models = self._model_infos()

    # -- models -------------------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Configured models, aliases (with their upstream names) and discovered models."""
        return self._models

    def _model_infos(self) -> list[ModelInfo]:
        config = self.config
        discovered = [  # a guess at the kind: /models does not say
            ModelInfo(id=name, upstream=name, kind="embedding" if "embed" in name else "chat")
            for name in self._discovered
        ]
        return served_models(config.models, config.aliases, embedding_models=config.embedding_models,
                             discovered=discovered)

    async def discover(self, *, timeout: float = 10.0) -> list[str]:
        """Fetch ``GET /models`` and serve what it lists (besides the configured models)."""
        if self.config.azure:
            raise ProviderRejected("model discovery is not supported for Azure", provider=self.name)
        upstream = self.upstream
        request = httpx.Request(
            "GET",
            self._url("models", ""),
            headers=self._json_headers,
            extensions=upstream.extensions_for(timeout),
        )
        deadlines = upstream.deadlines_within(timeout)
        body = await upstream.fetch(request, deadlines, _MODEL_LIST_LIMIT, what="model list")
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
        upstream = self.upstream
        http_request = upstream.post(
            self._url("chat/completions", ctx.upstream_model),
            self._json_headers,
            self._encode_chat(request, ctx, stream=False),
            ctx,
        )
        data = await upstream.fetch(http_request, upstream.deadlines(ctx), ctx.max_response_bytes)
        return self._decode_completion(data)

    def _decode_completion(self, data: bytes) -> ChatResponse:
        try:
            return _wire.decode_chat(data)
        except msgspec.DecodeError as exc:
            raise self._invalid(data, "chat completion", exc) from None

    def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Stream ``request`` as typed events; errors after ``StreamStart`` become a ``StreamError``."""
        return self.upstream.stream(self, request, ctx)

    def stream_request(self, request: ChatRequest, ctx: CallContext) -> httpx.Request:
        """The upstream request of a streamed chat (``sira_kernel.upstream.StreamCodec``)."""
        return self.upstream.post(
            self._url("chat/completions", ctx.upstream_model),
            self._sse_headers,
            self._encode_chat(request, ctx, stream=True),
            ctx,
        )

    def stream_parser(self, ctx: CallContext) -> StreamParser:
        """A parser for one ``chat.completion.chunk`` stream."""
        return StreamParser(
            provider=self.name,
            secrets=self.upstream.secrets,
            fallback_id=ctx.request_id,
            fallback_model=ctx.upstream_model,
        )

    def stream_json(self, data: bytes, ctx: CallContext, parser: StreamParser) -> list[StreamEvent]:
        """Some servers ignore ``"stream": true`` and answer with one JSON completion: its events."""
        completion = self._decode_completion(data)
        start = StreamStart(completion.id, completion.model, completion.created)
        return [start, *_wire.response_events(completion)]

    # -- embeddings ---------------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        """Embed ``request.input`` with the upstream model ``ctx.upstream_model``."""
        try:
            body = _wire.encode_embeddings(
                request, model=ctx.upstream_model, passthrough=self.config.passthrough_fields
            )
        except (TypeError, msgspec.EncodeError) as exc:
            raise ProviderRejected(f"request cannot be encoded: {exc}", provider=self.name) from None
        upstream = self.upstream
        http_request = upstream.post(
            self._url("embeddings", ctx.upstream_model),
            self._json_headers,
            body,
            ctx,
        )
        data = await upstream.fetch(http_request, upstream.deadlines(ctx), ctx.max_response_bytes)
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

    def _invalid(self, data: bytes, what: str, exc: Exception) -> ProviderUnavailable:
        text, _ = upstream_message(data[:ERROR_BODY_LIMIT])
        if data[:1] == b"{" and b'"error"' in data[:ERROR_BODY_LIMIT]:
            detail = f"upstream reported an error: {sanitize(text, self.upstream.secrets)}"
        else:
            detail = f"upstream sent an invalid {what}: {exc}"
        return ProviderUnavailable(detail, provider=self.name)
