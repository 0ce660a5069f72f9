"""The adapter against the checked-in Gemini exchanges (sira_kernel/testing/fixtures/gemini/).

Each exchange documents the OpenAI-shaped request that should become its ``request.json``; these
tests check that the adapter sends exactly those bytes' JSON, and turns the recorded answers (whole
and streamed) into the kernel values the fixtures README promises.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from sira_kernel.errors import ProviderRateLimited, ProviderRejected
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_gemini import FIXTURES, FakeGeminiUpstream, load_fixture
from sira_kernel.testing.providers import call_context, collect
from sira_kernel.types import (
    ChatRequest,
    EmbeddingRequest,
    Finish,
    Message,
    ReasoningDelta,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
)

from sira_provider_gemini import GeminiConfig, GeminiProvider, SafetySetting
from sira_provider_gemini._request import encode_chat, encode_embeddings

pytestmark = pytest.mark.anyio


def _tool(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"location": {"type": "string", "description": "A city name"}},
                "required": ["location"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }


WEATHER = _tool("get_weather", "Current weather for a city")
TIME = _tool("get_time", "Current local time for a city")


def _user(text: str) -> Message:
    return Message(role="user", content=text)


#: fixture name -> (the documented OpenAI-shaped request, the provider config it is sent with)
REQUESTS: dict[str, tuple[ChatRequest, GeminiConfig]] = {
    "text": (
        ChatRequest(
            model="gemini-2.0-flash",
            messages=[
                Message(role="system", content="You are a terse poet."),
                _user("Say hello to the sea in five words."),
            ],
            temperature=0.7,
            max_tokens=64,
        ),
        GeminiConfig(),
    ),
    "function_call": (
        ChatRequest(
            model="gemini-2.0-flash",
            messages=[_user("What is the weather in Paris, and the time in Tokyo?")],
            tools=[WEATHER, TIME],
            tool_choice="auto",
            parallel_tool_calls=True,
        ),
        GeminiConfig(),
    ),
    "thinking": (
        ChatRequest(
            model="gemini-2.5-flash",
            messages=[_user("Do I need an umbrella in Paris today?")],
            tools=[WEATHER],
            extra={"reasoning_effort": "low"},
        ),
        GeminiConfig(include_thoughts=True),
    ),
    "safety_block": (
        ChatRequest(
            model="gemini-2.0-flash", messages=[_user("Write step-by-step instructions for picking a lock.")]
        ),
        GeminiConfig(
            safety_settings=[
                SafetySetting(category="HARM_CATEGORY_DANGEROUS_CONTENT", threshold="BLOCK_LOW_AND_ABOVE")
            ]
        ),
    ),
    "prompt_blocked": (
        ChatRequest(
            model="gemini-2.0-flash", messages=[_user("Give me a detailed recipe for a dangerous weapon.")]
        ),
        GeminiConfig(),
    ),
}


def ctx(model: str = "gemini-2.0-flash") -> CallContext:
    return call_context(model)


def test_every_fixture_is_loadable_and_documented() -> None:
    folder = resources.files("sira_kernel.testing").joinpath("fixtures", "gemini")
    readme = folder.joinpath("README.md").read_text(encoding="utf-8")
    for name in FIXTURES:
        fixture = load_fixture(name)
        assert fixture.response or fixture.stream or fixture.error, name
        assert f"| `{name}` |" in readme, name
    with pytest.raises(KeyError):
        load_fixture("../../../etc/passwd")


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_the_adapter_sends_the_documented_request(name: str) -> None:
    request, config = REQUESTS[name]
    assert json.loads(encode_chat(request, config)) == load_fixture(name).request


def test_the_adapter_sends_the_documented_embedding_request() -> None:
    request = EmbeddingRequest(
        model="e", input=["The quick brown fox", "jumps over the lazy dog"], dimensions=8
    )
    texts = ["The quick brown fox", "jumps over the lazy dog"]
    body = encode_embeddings(texts, request, model="models/text-embedding-004", passthrough=True)
    assert json.loads(body) == load_fixture("embeddings").request


async def test_text(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    request, _ = REQUESTS["text"]
    fake.replay("text")
    response = await provider.chat(request, ctx())
    assert (response.id, response.model) == ("mJ8WaP2aEcOsnvgPqdOB0Qc", "gemini-2.0-flash")
    assert response.choices[0].message.content == "Hello, vast restless sea 🌊"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage == Usage(15, 7, 22, {"cached_tokens": 0}, {"reasoning_tokens": 0})

    fake.replay("text", chunk_delay=0.01)
    events = await collect(provider.stream(request, ctx()))
    assert events[0] == StreamStart("nZ8WaJLnBNKvnvgP4uvO2QQ", "gemini-2.0-flash", events[0].created)  # type: ignore[union-attr]
    assert events[1:] == [
        TextDelta("Hello"),
        TextDelta(", vast restless"),
        TextDelta(" sea 🌊"),
        Finish("stop"),
        Usage(15, 7, 22, {"cached_tokens": 0}, {"reasoning_tokens": 0}),
    ]


async def test_function_call(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    request, _ = REQUESTS["function_call"]
    fake.replay("function_call")
    message = (await provider.chat(request, ctx())).choices[0].message
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        ("call_0", "get_weather", '{"location":"Paris"}'),
        ("call_1", "get_time", '{"location":"Tokyo"}'),
    ]
    fake.replay("function_call")
    events = await collect(provider.stream(request, ctx()))
    assert events[1:4] == [
        ToolCallDelta(0, '{"location":"Paris"}', "call_0", "get_weather"),
        ToolCallDelta(1, '{"location":"Tokyo"}', "call_1", "get_time"),
        Finish("tool_calls"),
    ]


async def test_thinking(open_provider: Any, fake: FakeGeminiUpstream) -> None:
    request, _ = REQUESTS["thinking"]
    fixture = json.loads(load_fixture("thinking").response or b"")
    thought, call = fixture["candidates"][0]["content"]["parts"]
    usage = Usage(68, 77, 145, {"cached_tokens": 0}, {"reasoning_tokens": 62})
    async with open_provider(include_thoughts=True) as provider:
        fake.replay("thinking")
        response = await provider.chat(request, ctx("gemini-2.5-flash"))
        fake.replay("thinking")
        events = await collect(provider.stream(request, ctx("gemini-2.5-flash")))
    message = response.choices[0].message
    assert message.reasoning_content == thought["text"]
    assert message.reasoning_signature == call["thoughtSignature"]
    assert response.usage == usage
    reasoning = [e for e in events if isinstance(e, ReasoningDelta)]
    assert "".join(e.text for e in reasoning) == thought["text"]
    assert reasoning[-1] == ReasoningDelta("", signature=call["thoughtSignature"])
    assert events[-3:] == [
        ToolCallDelta(0, '{"location":"Paris"}', "call_0", "get_weather"),
        Finish("tool_calls"),
        usage,
    ]


async def test_safety_block(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    request, _ = REQUESTS["safety_block"]
    fake.replay("safety_block")
    [choice] = (await provider.chat(request, ctx())).choices
    assert (choice.message.content, choice.finish_reason) == (None, "content_filter")
    fake.replay("safety_block")
    events = await collect(provider.stream(request, ctx()))
    assert events[1:3] == [TextDelta("Lock picking is a skill"), Finish("content_filter")]
    assert isinstance(events[3], Usage) and len(events) == 4


async def test_prompt_blocked(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    request, _ = REQUESTS["prompt_blocked"]
    fake.replay("prompt_blocked")
    with pytest.raises(ProviderRejected) as whole:
        await provider.chat(request, ctx())
    fake.replay("prompt_blocked")
    with pytest.raises(ProviderRejected) as streamed:
        await collect(provider.stream(request, ctx()))
    for caught in (whole, streamed):
        assert (caught.value.status, caught.value.code) == (400, "content_filter")
        assert "blockReason SAFETY" in caught.value.message


async def test_rate_limited_and_invalid_key(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    fake.replay("rate_limited")
    with pytest.raises(ProviderRateLimited) as limited:
        await collect(provider.stream(REQUESTS["text"][0], ctx()))
    assert limited.value.retry_after == 12.0
    assert "Quota exceeded" in limited.value.message
    fake.replay("invalid_api_key")
    with pytest.raises(ProviderRejected) as refused:
        await provider.chat(REQUESTS["text"][0], ctx())
    assert (refused.value.status, refused.value.code) == (502, "upstream_auth_failed")


async def test_embeddings(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    fake.replay("embeddings")
    request = EmbeddingRequest(
        model="e", input=["The quick brown fox", "jumps over the lazy dog"], dimensions=8
    )
    response = await provider.embed(request, ctx("text-embedding-004"))
    recorded = json.loads(load_fixture("embeddings").response or b"")
    assert [d.embedding for d in response.data] == [e["values"] for e in recorded["embeddings"]]
    assert fake.requests[-1].json == load_fixture("embeddings").request
