"""The Acme provider and its plugin: the wire format of ``_wire`` over ``sira_kernel.upstream``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import msgspec

from sira_kernel import (
    CallContext,
    Capabilities,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    ProviderRejected,
    Secret,
    StreamEvent,
)
from sira_kernel.upstream import Upstream, UpstreamProvider, UpstreamProviderPlugin, UpstreamSettings, request_headers

from ._wire import AcmeStreamParser, answer_events, decode_answer, encode_request, status_error

__all__ = ["AcmeConfig", "AcmeProvider", "AcmeProviderPlugin"]

USER_AGENT = "sira-provider-acme/0.1"
#: Acme's stream content type (one JSON object per line).
STREAM_TYPE = "application/vnd.acme.stream"


class AcmeConfig(UpstreamSettings, kw_only=True, forbid_unknown_fields=True):
    """The ``[plugins.<id>]`` section: where Acme is, the key, what it serves, how to pool connections."""

    base_url: str = "https://api.acme.example"
    """The API root (requests go to ``{base_url}/acme/v1/generate``)."""
    api_key: Secret | None = None
    """Sent as ``x-acme-key``; None sends none."""
    models: list[str] = msgspec.field(default_factory=list)
    """Acme engines served, public id = engine name."""
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    """Public model id -> Acme engine."""
    # UpstreamSettings brings headers, timeouts, ca_bundle and proxy; a smaller pool suits Acme:
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 64
    """Connection pool size."""


class AcmeProvider(UpstreamProvider):
    """Acme as a kernel ``Provider``: chat, streamed chat, tools, images, JSON mode; no embeddings."""

    def __init__(self, name: str, config: AcmeConfig) -> None:
        self.name = name
        self.config = config
        # Acme rejects fields it does not know, so nothing is passed through.
        self.capabilities = Capabilities(vision=True, passthrough_fields=False)
        key = config.api_key.reveal() if config.api_key else None
        self.upstream = Upstream(self, config, secrets=[key, *config.headers.values()],
                                 status_error=status_error, label="Acme")
        self._json_headers, stream_headers = request_headers(
            USER_AGENT, config.headers, {"x-acme-key": key} if key else {}
        )
        self._stream_headers = httpx.Headers({**stream_headers, "accept": STREAM_TYPE})
        self._url = f"{config.base_url.rstrip('/')}/acme/v1/generate"
        engines = {m: m for m in config.models} | dict(config.aliases)
        self._models = [ModelInfo(id=public, owned_by="acme", upstream=engine) for public, engine in engines.items()]

    def models(self) -> list[ModelInfo]:
        return self._models

    async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        upstream = self.upstream
        body = encode_request(request, ctx, provider=self.name, stream=False)
        data = await upstream.fetch(self._request(body, ctx, self._json_headers), upstream.deadlines(ctx),
                                    ctx.max_response_bytes)
        return decode_answer(data, provider=self.name)

    def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        return self.upstream.stream(self, request, ctx)

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        raise ProviderRejected("Acme has no embeddings", provider=self.name)

    # -- sira_kernel.upstream.StreamCodec -----------------------------------------------------------

    def stream_request(self, request: ChatRequest, ctx: CallContext) -> httpx.Request:
        body = encode_request(request, ctx, provider=self.name, stream=True)
        return self._request(body, ctx, self._stream_headers)

    def stream_parser(self, ctx: CallContext) -> AcmeStreamParser:
        return AcmeStreamParser(self.name, self.upstream.secrets)

    def stream_json(self, data: bytes, ctx: CallContext, parser: AcmeStreamParser) -> list[StreamEvent]:
        parser.started = True
        return answer_events(decode_answer(data, provider=self.name))

    def _request(self, body: dict[str, Any], ctx: CallContext, headers: httpx.Headers) -> httpx.Request:
        return self.upstream.post(self._url, headers, msgspec.json.encode(body), ctx)


class AcmeProviderPlugin(UpstreamProviderPlugin):
    """Serves chat and streamed chat from one Acme upstream (run several instances for several)."""

    Config = AcmeConfig
    config: AcmeConfig
    provider: AcmeProvider

    def __init__(self, config: AcmeConfig | None = None) -> None:
        self.config = config if config is not None else AcmeConfig()
        self.provider = AcmeProvider("provider-acme", self.config)
