from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sira_kernel.errors import ProviderRejected
from sira_kernel.providers import CallContext
from sira_kernel.types import (
    ChatRequest,
    Finish,
    Message,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolFunction,
)

from sira_provider_mock import MockProvider

pytestmark = pytest.mark.anyio

Ask = Callable[..., ChatRequest]
Collect = Callable[..., Any]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 3, "maximum": 10},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "hourly": {"type": "boolean"},
                "radius": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "at": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}, "note": {"type": ["string", "null"]}},
                },
            },
            "required": ["city", "days"],
        },
    },
}
WEATHER_ARGS = {
    "city": "mock",
    "days": 3,
    "unit": "celsius",
    "hourly": True,
    "radius": 1,
    "tags": ["mock"],
    "at": {"lat": 1, "note": "mock"},
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


async def test_single_tool_call(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    response = await provider.chat(ask("weather in Paris?", tools=[WEATHER]), ctx)
    (choice,) = response.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_mock_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    assert response.usage is not None and response.usage.completion_tokens > 0


async def test_parallel_calls_use_the_first_two_tools(
    provider: MockProvider, ctx: CallContext, ask: Ask
) -> None:
    extra = {"type": "function", "function": {"name": "never_called"}}
    response = await provider.chat(ask("both", tools=[WEATHER, TIME, extra]), ctx)
    calls = response.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2
    assert json.loads(calls[1].function.arguments) == {}


async def test_parallel_tool_calls_false(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    response = await provider.chat(ask("one", tools=[WEATHER, TIME], parallel_tool_calls=False), ctx)
    assert [c.function.name for c in response.choices[0].message.tool_calls or []] == ["get_weather"]


async def test_named_tool_choice(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    response = await provider.chat(ask("time", tools=[WEATHER, TIME], tool_choice=choice), ctx)
    assert [c.function.name for c in response.choices[0].message.tool_calls or []] == ["get_time"]


async def test_named_tool_choice_must_exist(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    choice = {"type": "function", "function": {"name": "missing"}}
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask("x", tools=[WEATHER], tool_choice=choice), ctx)
    assert caught.value.status == 400 and caught.value.provider == "mock"


async def test_tool_choice_none_answers_in_text(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    response = await provider.chat(ask("hi", tools=[WEATHER], tool_choice="none"), ctx)
    assert response.choices[0].message.tool_calls is None
    assert response.choices[0].finish_reason == "stop"


async def test_streamed_arguments_reassemble(provider: MockProvider, ask: Ask, collect: Collect) -> None:
    events = await collect(provider, ask("weather and time", tools=[WEATHER, TIME], n=2))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert not any(isinstance(e, TextDelta) for e in events)
    for index in (0, 1):
        calls: dict[int, dict[str, Any]] = {}
        for delta in (d for d in deltas if d.index == index):
            if delta.id is not None:
                assert delta.call_index not in calls  # id and name come once, first
                calls[delta.call_index] = {"id": delta.id, "name": delta.name, "arguments": delta.arguments}
            else:
                calls[delta.call_index]["arguments"] += delta.arguments
        assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
        assert json.loads(calls[0]["arguments"]) == WEATHER_ARGS
        assert json.loads(calls[1]["arguments"]) == {}
    fragments = [d for d in deltas if d.index == 0 and d.call_index == 0 and d.id is None]
    assert 2 <= len(fragments) <= 3
    assert [e for e in events if isinstance(e, Finish)] == [Finish("tool_calls", 0), Finish("tool_calls", 1)]


async def test_stream_and_chat_give_the_same_calls(
    provider: MockProvider, ask: Ask, ctx: CallContext, collect: Collect
) -> None:
    response = await provider.chat(ask("w", tools=[WEATHER]), ctx)
    events = await collect(provider, ask("w", tools=[WEATHER]))
    streamed = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert streamed == (response.choices[0].message.tool_calls or [])[0].function.arguments
    assert events[-1].completion_tokens == response.usage.completion_tokens  # type: ignore[union-attr]


def _tool_turn(*results: str) -> list[Message]:
    calls = [
        ToolCall(id=f"call_{i}", function=ToolFunction(name="get_weather", arguments="{}"))
        for i in range(len(results))
    ]
    return [
        Message(role="user", content="What's the weather?"),
        Message(role="assistant", tool_calls=calls),
        *(Message(role="tool", tool_call_id=f"call_{i}", content=r) for i, r in enumerate(results)),
    ]


async def test_tool_result_turn_summarizes(provider: MockProvider, ctx: CallContext) -> None:
    request = ChatRequest(model="m", messages=_tool_turn('{"temp": 21, "sky": "clear"}'), tools=[WEATHER])
    response = await provider.chat(request, ctx)
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert choice.message.content == 'The tool returned: {"temp": 21, "sky": "clear"}'


async def test_several_tool_results(provider: MockProvider, ctx: CallContext) -> None:
    request = ChatRequest(model="m", messages=_tool_turn("sunny", "12:00"), tools=[WEATHER, TIME])
    response = await provider.chat(request, ctx)
    assert response.choices[0].message.content == "The 2 tools returned: sunny; 12:00"
