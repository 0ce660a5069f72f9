"""The bundled provider adapters as the conformance kit sees them: one ``AdapterUnderTest`` each."""

from __future__ import annotations

from typing import Any

from sira_provider_anthropic import AnthropicProviderPlugin
from sira_provider_gemini import GeminiProviderPlugin
from sira_provider_mock import MockProviderPlugin
from sira_provider_openai import OpenAIProviderPlugin

from sira_kernel import Capabilities
from sira_kernel.testing.conformance import AdapterUnderTest
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream
from sira_kernel.testing.fake_anthropic import Fault as AnthropicFault
from sira_kernel.testing.fake_gemini import FakeGeminiUpstream, GeminiFault
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream
from sira_kernel.testing.loopback import Fault, format_seconds, sse_event

OPENAI_KEY = "sk-conformance-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-conformance-0123456789"
GEMINI_KEY = "AIza-conformance-0123456789"


def mock_directives(fault: Fault, upstream: Any) -> str:
    """The mock has no upstream: a fault is ``[mock:...]`` directives in the user message."""
    parts = []
    if fault.status is not None:
        parts.append(f"[mock:status={fault.status}]")
    if fault.retry_after is not None:
        parts.append(f"[mock:retry_after={format_seconds(fault.retry_after)}]")
    if fault.hang:
        parts.append("[mock:hang]")
    if fault.drop_after is not None:
        parts.append(f"[mock:drop={fault.drop_after}]")
    if fault.first_token_delay:
        parts.append(f"[mock:first_token_ms={fault.first_token_delay * 1000:g}]")
    if fault.chunk_delay is not None:
        parts.append(f"[mock:pace_ms={fault.chunk_delay * 1000:g}]")
    if fault.reset or fault.delay or fault.body is not None:
        raise ValueError(f"the mock cannot simulate {fault!r}")
    return " " + "".join(parts)


#: An OpenAI-format stream that starts, then reports an error in a chunk (as OpenAI-compatible
#: servers do when they fail mid-answer) and ends without [DONE].
OPENAI_STREAM_ERROR = b"".join(
    sse_event(chunk)
    for chunk in (
        {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o-mini",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Echo:"}, "finish_reason": None}]},
        {"error": {"message": "The server had an error while processing your request.", "type": "server_error"}},
    )
)

OPENAI = AdapterUnderTest(
    name="provider-openai",
    plugin=OpenAIProviderPlugin,
    upstream=lambda: FakeOpenAIUpstream(api_key=OPENAI_KEY),
    reasoning_upstream=lambda: FakeOpenAIUpstream(api_key=OPENAI_KEY, reasoning=True),
    config=lambda fake: {
        "base_url": fake.base_url, "api_key": OPENAI_KEY,
        "models": ["gpt-4o-mini"], "embedding_models": ["text-embedding-3-small"],
    },
    chat_model="gpt-4o-mini",
    embedding_model="text-embedding-3-small",
    capabilities=Capabilities(vision=True, embeddings=True),
    stream_error=Fault(body=OPENAI_STREAM_ERROR, content_type="text/event-stream"),
    reasoning={},  # the reasoning fake reasons on every request (DeepSeek-style reasoning_content)
)

ANTHROPIC = AdapterUnderTest(
    name="provider-anthropic",
    plugin=AnthropicProviderPlugin,
    upstream=lambda: FakeAnthropicUpstream(api_key=ANTHROPIC_KEY),
    config=lambda fake: {"base_url": fake.base_url, "api_key": ANTHROPIC_KEY, "models": ["claude-conformance-1"]},
    chat_model="claude-conformance-1",
    capabilities=Capabilities(vision=True, json_mode=False),
    reasoning={"thinking": {"type": "enabled", "budget_tokens": 1024}},
    stream_error=AnthropicFault(error_after=4, error_type="overloaded_error"),
    events_before_text=2,  # message_start, content_block_start
)

GEMINI = AdapterUnderTest(
    name="provider-gemini",
    plugin=GeminiProviderPlugin,
    upstream=lambda: FakeGeminiUpstream(api_key=GEMINI_KEY),
    config=lambda fake: {
        "base_url": fake.base_url, "api_key": GEMINI_KEY,
        "models": ["gemini-2.0-flash"], "embedding_models": ["text-embedding-004"],
    },
    chat_model="gemini-2.0-flash",
    embedding_model="text-embedding-004",
    capabilities=Capabilities(vision=True, embeddings=True),
    reasoning={"generationConfig": {"thinkingConfig": {"includeThoughts": True}}},
    tool_arguments_text=None,  # functionCall.args is an object: the adapter encodes it
    stream_error=GeminiFault(error_after=2, status=503),
    events_before_text=0,  # every event carries a piece of the answer
)

MOCK = AdapterUnderTest(
    name="provider-mock",
    plugin=MockProviderPlugin,
    config=lambda _: {"models": ["mock-1"], "embedding_models": ["mock-embed"]},
    chat_model="mock-1",
    embedding_model="mock-embed",
    capabilities=Capabilities(vision=True, embeddings=True),
    tool_arguments=({}, {}),  # built from the tools' schemas, which have no properties
    tool_arguments_text=None,
    events_before_text=0,
    inject=mock_directives,
    faults=frozenset({"status", "hang", "drop", "first_token_delay", "chunk_delay"}),
)

ALL = (OPENAI, ANTHROPIC, GEMINI, MOCK)
