"""The provider adapter: chat and streamed chat over one pooled client to Anthropic's Messages API.

The hot path does little per call: headers, the URL and timeout extensions are built once, the body
is encoded once with msgspec, answers decode straight into small structs. The exchange itself
(deadlines, bounded reads, streams, closing responses, transport errors) is
:class:`sira_kernel.upstream.Upstream`'s; this module knows the Messages API's requests and answers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import msgspec
from sira_kernel.errors import ProviderError, ProviderRejected, ProviderUnavailable
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

from ._config import AnthropicConfig
from ._errors import ERROR_STATUS, error_for, status_error, upstream_error
from ._stream import StreamParser
from ._translate import UnsupportedRequest, encode_request
from ._wire import decode_message, response_events, to_chat_response

__all__ = ["AnthropicProvider"]

USER_AGENT = "sira-provider-anthropic/0.1"


class AnthropicProvider(UpstreamProvider):
    """Anthropic's Messages API as a kernel ``Provider``; ``name`` is the plugin instance id."""

    def __init__(self, name: str, config: AnthropicConfig) -> None:
        self.name = name
        self.config = config
        self.capabilities = Capabilities(
            vision=True, json_mode=False, passthrough_fields=bool(config.passthrough_fields)
        )
        self._url = httpx.URL(f"{config.base_url.rstrip('/')}/v1/messages")
        key = config.api_key.reveal() if config.api_key else None
        self.upstream = Upstream(
            self,
            config,
            secrets=(key, *config.headers.values()),
            status_error=status_error,
            label="Anthropic",
        )
        own = {"anthropic-version": config.anthropic_version}
        if config.beta:
            own["anthropic-beta"] = ",".join(config.beta)
        if key:
            own["x-api-key"] = key
        self._json_headers, self._sse_headers = request_headers(USER_AGENT, config.headers, own)
        self._models = served_models(config.models, config.aliases)

    # -- the Provider protocol ----------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Configured models and aliases (with their upstream names)."""
        return self._models

    async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        """Complete ``request`` without streaming."""
        upstream = self.upstream
        data = await upstream.fetch(
            self._request(request, ctx, stream=False), upstream.deadlines(ctx), ctx.max_response_bytes
        )
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

    def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Stream ``request`` as typed events; errors after ``StreamStart`` become a ``StreamError``."""
        return self.upstream.stream(self, request, ctx)

    def stream_request(self, request: ChatRequest, ctx: CallContext) -> httpx.Request:
        """The upstream request of a streamed chat (``sira_kernel.upstream.StreamCodec``)."""
        return self._request(request, ctx, stream=True)

    def stream_parser(self, ctx: CallContext) -> StreamParser:
        """A parser for one Messages event stream."""
        return StreamParser(
            provider=self.name,
            secrets=self.upstream.secrets,
            fallback_id=ctx.request_id,
            fallback_model=ctx.upstream_model,
            created=int(time.time()),
        )

    def stream_json(self, data: bytes, ctx: CallContext, parser: StreamParser) -> list[StreamEvent]:
        """A proxy that ignores ``"stream": true`` answers with one message: its events."""
        completion = self._decode(data, ctx)
        return [
            StreamStart(completion.id, completion.model, completion.created),
            *response_events(completion),
        ]

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
        return self.upstream.post(self._url, self._sse_headers if stream else self._json_headers, body, ctx)

    def _invalid(self, data: bytes, exc: Exception | None) -> ProviderError:
        error_type, text = upstream_error(data[:ERROR_BODY_LIMIT])
        if error_type is not None:  # an error object with a 200 status: as if sent with its own status
            status = ERROR_STATUS.get(error_type, 500)
            return error_for(error_type, status, sanitize(text, self.upstream.secrets), provider=self.name)
        return ProviderUnavailable(f"Anthropic sent an invalid message: {exc}", provider=self.name)
