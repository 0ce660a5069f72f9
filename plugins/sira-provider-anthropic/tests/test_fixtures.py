"""The adapter against Anthropic's own documented exchanges, replayed byte for byte by the fake.

Each checked-in exchange (``sira_kernel/testing/fixtures/anthropic``) is checked both ways: the
adapter turns the equivalent kernel request into the documented request body, and turns the
documented answer into the expected kernel response or events.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sira_kernel.errors import ProviderUnavailable
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream, Fault, fixture_names, load_fixture
from sira_kernel.testing.providers import call_context
from sira_kernel.types import (
    ChatRequest,
    Finish,
    Message,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
)

from sira_provider_anthropic import AnthropicConfig, AnthropicProvider, to_anthropic

pytestmark = pytest.mark.anyio

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
    },
    "required": ["location"],
}
DESCRIPTION = "Get the current weather in a given location"

#: The kernel request each documented request body stands for.
REQUESTS: dict[str, ChatRequest] = {
    "text": ChatRequest(
        model="claude", messages=[Message(role="user", content="Hello, Claude")], max_tokens=1024
    ),
    "text_stream": ChatRequest(
        model="claude", messages=[Message(role="user", content="Hello")], max_tokens=256
    ),
    "tool_use": ChatRequest(
        model="claude",
        messages=[Message(role="user", content="What is the weather like in San Francisco?")],
        max_tokens=1024,
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": DESCRIPTION,
                    "parameters": {
                        **WEATHER_PARAMETERS,
                        "properties": {
                            **WEATHER_PARAMETERS["properties"],
                            "unit": {
                                "type": "string",
                                "enum": ["celsius", "fahrenheit"],
                                "description": 'The unit of temperature, either "celsius" or "fahrenheit"',
                            },
                        },
                    },
                },
            }
        ],
    ),
    "tool_use_stream": ChatRequest(
        model="claude",
        messages=[Message(role="user", content="What is the weather like in San Francisco?")],
        max_tokens=1024,
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": DESCRIPTION,
                    "parameters": WEATHER_PARAMETERS,
                },
            }
        ],
        tool_choice="required",
    ),
    "thinking": ChatRequest(
        model="claude",
        messages=[
            Message(
                role="user", content="Are there an infinite number of prime numbers such that n mod 4 == 3?"
            )
        ],
        max_tokens=16000,
        extra={"thinking": {"type": "enabled", "budget_tokens": 10000}},
    ),
    "thinking_stream": ChatRequest(
        model="claude",
        messages=[Message(role="user", content="What is the greatest common divisor of 1071 and 462?")],
        max_tokens=20000,
        extra={"thinking": {"type": "enabled", "budget_tokens": 16000}},
    ),
}
REQUESTS["overloaded_error_stream"] = REQUESTS["text_stream"]


def ctx() -> CallContext:
    return call_context("claude-opus-4-6")


async def collect(provider: AnthropicProvider, request: ChatRequest) -> list[StreamEvent]:
    return [event async for event in provider.stream(request, ctx())]


def canonical(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with string message content spelled as one text block, the way the adapter sends it."""
    messages = [
        {**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str) else m
        for m in body["messages"]
    ]
    return {**body, "messages": messages}


def test_every_fixture_is_covered() -> None:
    assert sorted(REQUESTS) == fixture_names()


@pytest.mark.parametrize("name", fixture_names())
def test_the_adapter_sends_the_documented_request(name: str) -> None:
    documented = load_fixture(name).request
    sent = to_anthropic(
        REQUESTS[name],
        model=documented["model"],
        stream=bool(documented.get("stream")),
        config=AnthropicConfig(),
    )
    assert sent == canonical(documented)


async def test_text(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.replay("text")
    response = await provider.chat(REQUESTS["text"], ctx())
    assert (response.id, response.model) == ("msg_01XFDUDYJgAACzvnptvVoYEL", "claude-opus-4-6")
    assert response.choices[0].message.content == "Hello!"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (
        12,
        6,
        18,
    )


async def test_text_stream(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.replay("text_stream")
    events = await collect(provider, REQUESTS["text_stream"])
    assert isinstance(events[0], StreamStart)
    assert (events[0].id, events[0].model) == ("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "claude-opus-4-6")
    assert events[1:] == [
        TextDelta("Hello"),
        TextDelta("!"),
        Finish("stop"),
        Usage(  # input from message_start, output from message_delta
            prompt_tokens=25,
            completion_tokens=15,
            total_tokens=40,
            prompt_tokens_details={"cached_tokens": 0, "cache_creation_tokens": 0},
        ),
    ]


async def test_tool_use(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.replay("tool_use")
    response = await provider.chat(REQUESTS["tool_use"], ctx())
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check the current weather in San Francisco for you."
    [call] = choice.message.tool_calls or []
    assert (call.id, call.function.name) == ("toolu_01A09q90qw90lq917835lq9", "get_weather")
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}
    assert response.usage is None  # the documented body has none
    assert response.model == "claude-opus-4-6"


async def test_tool_use_stream(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.replay("tool_use_stream")
    events = await collect(provider, REQUESTS["tool_use_stream"])
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == (
        "Okay, let's check the weather for San Francisco, CA:"
    )
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0] == ToolCallDelta(0, "", "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    assert [d.arguments for d in deltas[1:]] == [  # every fragment, in order; the empty one skipped
        '{"location":',
        ' "San',
        " Francisc",
        "o,",
        ' CA"',
        ",",
        ' "unit": "fah',
        'renheit"}',
    ]
    assert {d.call_index for d in deltas} == {0}  # content block 1 is tool call 0
    arguments = "".join(d.arguments for d in deltas)
    assert json.loads(arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert events[-2:] == [
        Finish("tool_calls"),
        Usage(
            prompt_tokens=472,
            completion_tokens=89,
            total_tokens=561,
            prompt_tokens_details={"cached_tokens": 0, "cache_creation_tokens": 0},
        ),
    ]


async def test_thinking(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.replay("thinking")
    response = await provider.chat(REQUESTS["thinking"], ctx())
    message = response.choices[0].message
    assert message.reasoning_content == "Let me analyze this step by step..."
    assert message.reasoning_signature == load_fixture("thinking").response["content"][0]["signature"]  # type: ignore[index]
    assert message.content == "Based on my analysis..."
    assert (response.id, response.model) == ("req-test", "claude-opus-4-6")  # the documented body has neither


async def test_thinking_stream(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.replay("thinking_stream")
    events = await collect(provider, REQUESTS["thinking_stream"])
    reasoning = [e for e in events if isinstance(e, ReasoningDelta)]
    assert "".join(e.text for e in reasoning) == (
        "I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n1071 = 2 × 462 + 147"
        "\n462 = 3 × 147 + 21\n147 = 7 × 21 + 0\nThe remainder is 0, so GCD(1071, 462) = 21."
    )
    assert reasoning[-1] == ReasoningDelta(
        "", signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."
    )
    assert events[-2:] == [
        TextDelta("The greatest common divisor of 1071 and 462 is **21**."),
        Finish("stop"),
    ]  # and no Usage: this documented stream reports none


async def test_overloaded_error_stream(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.replay("overloaded_error_stream")
    with pytest.raises(ProviderUnavailable) as caught:
        await collect(provider, REQUESTS["overloaded_error_stream"])
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        503,
        "upstream_overloaded",
        True,
    )
    assert "Overloaded" in caught.value.message


async def test_replay_with_faults(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    """Faults shape a replay too: here the documented tool stream is cut by an overloaded error."""
    fake.enqueue(Fault(fixture="tool_use_stream", error_after=20))
    events = await collect(provider, REQUESTS["tool_use_stream"])
    assert events[-1].status == 503  # type: ignore[union-attr]
    assert any(isinstance(e, ToolCallDelta) for e in events)
    with pytest.raises(KeyError, match="no Anthropic fixture"):
        fake.replay("no_such_exchange")
