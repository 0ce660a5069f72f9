"""Sira's Anthropic-compatible HTTP surface (plugin id ``api-anthropic``).

The official ``anthropic`` SDK (base URL: the gateway's root) reaches any provider through the
kernel pipeline. Routes, under each configured prefix (default ``/v1``):

* ``POST {prefix}/messages``: the Messages API, whole or streamed (Anthropic's SSE events in
  Anthropic's order), translated to and from the kernel's OpenAI-shaped types
  (see ``_request``, ``_response`` and ``_stream`` for the mapping).
* ``POST {prefix}/messages/count_tokens``: ``{"input_tokens": n}`` from the kernel's
  ``TokenCounter`` service when one is registered (``sira-tokenizer``), else a documented
  estimate (``_tokens``).

``GET /v1/models`` is left to ``api-openai``. Callers authenticate with ``x-api-key`` (or a Bearer
token); ``anthropic-version`` is accepted whatever its value; every answer carries the request id
in ``request-id`` and ``x-request-id``, and a successful one where it went in ``x-sira-route``.
Errors have Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``; a failure after
a stream started ends it with ``event: error``, which the SDK raises. A client that disconnects
cancels the upstream call.

Endpoints are raw ASGI callables (no per-request Starlette ``Request``) because this is the hot path;
the plumbing (body limit, disconnects, stream relay, headers) is ``sira_kernel.surface``'s.
"""

from __future__ import annotations

from ._plugin import AnthropicSurfaceConfig, AnthropicSurfacePlugin
from ._tokens import estimate_input_tokens

__all__ = ["AnthropicSurfaceConfig", "AnthropicSurfacePlugin", "estimate_input_tokens"]
