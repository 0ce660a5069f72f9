"""One API, any provider: the official ``openai`` SDK → Sira → Anthropic- and Gemini-format upstreams.

The upstreams are the fake Anthropic Messages and Gemini servers (real HTTP on loopback, their real
wire formats); Sira runs the installed ``api-openai``, ``provider-anthropic`` and
``provider-gemini`` plugins. Streamed tool calls must arrive complete and in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from sira_kernel.testing import ServerThread, make_kernel
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream
from sira_kernel.testing.fake_gemini import FakeGeminiUpstream

MASTER = "sk-cross-master-0123456789"
ANTHROPIC_KEY = "sk-ant-cross-0123456789"
GEMINI_KEY = "AIza-cross-0123456789"
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a city",
     "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
]


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[ServerThread, FakeAnthropicUpstream, FakeGeminiUpstream]]:
    with FakeAnthropicUpstream(api_key=ANTHROPIC_KEY) as claude, FakeGeminiUpstream(api_key=GEMINI_KEY) as gemini:
        config = {
            "kernel": {"plugins": ["api-openai", "provider-anthropic", "provider-gemini"]},
            "server": {"master_key": MASTER},
            "plugins": {
                "provider-anthropic": {"base_url": claude.base_url, "api_key": ANTHROPIC_KEY,
                                       "models": ["claude-cross-1"]},
                "provider-gemini": {"base_url": gemini.base_url, "api_key": GEMINI_KEY, "models": ["gemini-2.0-flash"]},
            },
        }
        with ServerThread(lambda: make_kernel(config=config)) as server:
            yield server, claude, gemini


@pytest.fixture
def client(gateway: tuple[ServerThread, Any, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway[0].base_url}/v1", api_key=MASTER, max_retries=0) as sdk:
        yield sdk


@pytest.mark.parametrize("model", ["claude-cross-1", "gemini-2.0-flash"])
def test_text_and_stream(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello there"}])
    assert "Hello there" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.total_tokens > 0
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello there"}], stream=True,
        stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].usage is not None


@pytest.mark.parametrize("model", ["claude-cross-1", "gemini-2.0-flash"])
def test_streamed_tool_calls_arrive_complete_and_in_order(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather and time in Paris?"}], tools=TOOLS, stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    order: list[int] = []
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.index not in calls:
                    order.append(delta.index)
                    calls[delta.index] = {"id": "", "name": "", "arguments": ""}
                call = calls[delta.index]
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] = delta.function.name or call["name"]
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert order == sorted(order) == [0, 1]  # indexes in order, each opened once
    assert [calls[i]["name"] for i in order] == ["get_weather", "get_time"]
    for call in calls.values():
        assert call["id"]
        arguments = json.loads(call["arguments"])  # complete JSON, not fragments
        assert isinstance(arguments, dict) and isinstance(arguments.get("location"), str)
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather and time in Paris?"}], tools=TOOLS,
    )
    whole = [(c.function.name, json.loads(c.function.arguments)) for c in answer.choices[0].message.tool_calls or []]
    assert whole == [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in order]


@pytest.mark.parametrize("model", ["claude-cross-1", "gemini-2.0-flash"])
def test_tool_results_round_trip(
    client: openai.OpenAI, gateway: tuple[ServerThread, FakeAnthropicUpstream, FakeGeminiUpstream], model: str
) -> None:
    first = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS[:1],
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    follow_up = client.chat.completions.create(model=model, tools=TOOLS[:1], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ])
    assert follow_up.choices[0].finish_reason == "stop"
    upstream = gateway[1] if model.startswith("claude") else gateway[2]
    sent = json.dumps(upstream.requests[-1].json)
    assert "Sunny, 21 C" in sent  # the tool result reached the upstream in its own wire format


@pytest.mark.parametrize(("model", "status", "error"), [
    ("claude-cross-1", 529, openai.InternalServerError), ("claude-cross-1", 429, openai.RateLimitError),
    ("gemini-2.0-flash", 429, openai.RateLimitError), ("gemini-2.0-flash", 500, openai.InternalServerError),
])
def test_upstream_errors_map_to_sdk_errors(
    client: openai.OpenAI, gateway: tuple[ServerThread, FakeAnthropicUpstream, FakeGeminiUpstream],
    model: str, status: int, error: type[Exception],
) -> None:
    from sira_kernel.testing.loopback import Fault

    upstream = gateway[1] if model.startswith("claude") else gateway[2]
    upstream.enqueue(Fault(status=status, retry_after=3 if status == 429 else None))
    with pytest.raises(error):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
