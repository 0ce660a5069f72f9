"""Non-streamed chat against the fake Anthropic upstream, over real HTTP."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from sira_kernel.errors import ProviderRejected
from sira_kernel.providers import CallContext
from sira_kernel.routing import Deployment, RouteTable
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream, Fault
from sira_kernel.testing.providers import TOOLS, call_context
from sira_kernel.testing.providers import chat_request as ask
from sira_kernel.types import ChatRequest, EmbeddingRequest, Message, ModelInfo, ToolCall, ToolFunction, Usage

from sira_provider_anthropic import AnthropicProvider

pytestmark = pytest.mark.anyio

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def ctx(model: str = "claude-sonnet-4-5", **limits: Any) -> CallContext:
    return call_context(model, **limits)


async def test_text_reply_usage_and_upstream_model(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    response = await provider.chat(ask("hello there"), ctx())

    choice = response.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "Echo: hello there",
        "stop",
    )
    assert (response.id, response.model) == ("msg_fake_1", "claude-sonnet-4-5")
    assert response.created > 0
    assert response.usage == Usage(
        prompt_tokens=2,
        completion_tokens=3,
        total_tokens=5,
        prompt_tokens_details={"cached_tokens": 0, "cache_creation_tokens": 0},
    )
    sent = fake.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.json == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    }


async def test_headers_are_config_only(open_provider: Any, fake: FakeAnthropicUpstream) -> None:
    beta = ["prompt-caching-2024-07-31", "output-128k-2025-02-19"]
    async with open_provider(beta=beta, headers={"X-Team": "blue", "x-api-key": "spoofed"}) as provider:
        await provider.chat(ask(), ctx())
    headers = fake.requests[-1].headers
    assert headers["x-api-key"] == fake.api_key  # a configured header never replaces the key
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31,output-128k-2025-02-19"
    assert headers["x-team"] == "blue"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


async def test_no_beta_header_by_default(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    await provider.chat(ask(), ctx())
    assert "anthropic-beta" not in fake.requests[-1].headers


async def test_models_and_aliases(open_provider: Any) -> None:
    async with open_provider(models=["claude-sonnet-4-5"], aliases={"claude": "claude-opus-4-1"}) as provider:
        assert provider.models() == [
            ModelInfo(id="claude-sonnet-4-5", upstream="claude-sonnet-4-5"),
            ModelInfo(id="claude", upstream="claude-opus-4-1"),
        ]
        table = RouteTable({"anthropic": provider})
        assert table.lookup("claude") == (Deployment("anthropic", "claude-opus-4-1"),)
        assert provider.capabilities.vision and provider.capabilities.tools
        assert not provider.capabilities.embeddings


async def test_embeddings_are_rejected(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider.embed(EmbeddingRequest(model="m", input="x"), ctx())
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        400,
        "embeddings_not_supported",
        False,
    )
    assert fake.requests == []  # nothing was sent


async def test_tool_use(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    response = await provider.chat(ask("weather?", tools=TOOLS[:1]), ctx())
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."  # tool_choice auto: the fake talks first
    [call] = choice.message.tool_calls or []
    assert (call.id, call.type, call.function.name) == ("toolu_fake_0", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"location": "Paris"}
    assert fake.requests[-1].json["tools"] == [
        {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
    ]


async def test_parallel_tool_use_and_its_opt_out(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    response = await provider.chat(ask("both?", tools=TOOLS, tool_choice="required"), ctx())
    calls = response.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_fake_0", "get_weather", {"location": "Paris"}),
        ("toolu_fake_1", "get_time", {"location": "Tokyo"}),
    ]
    assert response.choices[0].message.content is None  # no text at all: content is null, as OpenAI sends

    response = await provider.chat(ask("one?", tools=TOOLS, parallel_tool_calls=False), ctx())
    assert len(response.choices[0].message.tool_calls or []) == 1
    assert fake.requests[-1].json["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_images_reach_the_upstream(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    request = ChatRequest(model="m", messages=[Message(role="user", content=content)])
    response = await provider.chat(request, ctx())
    assert response.choices[0].message.content == "Echo: what is this"
    sources = [b["source"] for b in fake.requests[-1].json["messages"][0]["content"] if b["type"] == "image"]
    assert sources == [
        {"type": "base64", "media_type": "image/png", "data": PNG},
        {"type": "url", "url": "https://example.com/cat.jpg"},
    ]


async def test_system_multi_turn_and_tool_results_round_trip(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    """A whole OpenAI-shaped tool conversation passes the fake's checks (alternation, tool ids)."""
    first = await provider.chat(
        ChatRequest(
            model="m",
            messages=[
                Message(role="system", content="Be brief."),
                Message(role="user", content="weather and time?"),
            ],
            tools=TOOLS,
        ),
        ctx(),
    )
    assistant = first.choices[0].message
    calls = assistant.tool_calls or []
    history = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="weather and time?"),
        assistant,
        Message(role="tool", tool_call_id=calls[0].id, content="18 degrees"),
        Message(role="tool", tool_call_id=calls[1].id, content="noon"),
    ]
    second = await provider.chat(ChatRequest(model="m", messages=history, tools=TOOLS), ctx())
    assert second.choices[0].message.content == "Echo: 18 degrees noon"
    assert second.choices[0].finish_reason == "stop"
    sent = fake.requests[-1].json
    assert sent["system"] == [{"type": "text", "text": "Be brief."}]
    assert [turn["role"] for turn in sent["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in sent["messages"][2]["content"]] == ["tool_result", "tool_result"]


async def test_thinking_round_trip_with_signature(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    first = await provider.chat(ask("why?", extra={"thinking": thinking}), ctx())
    message = first.choices[0].message
    assert message.reasoning_content == "Let me think about that."
    assert message.reasoning_signature  # the fake signs its thinking and demands the signature back
    assert message.content == "Echo: why?"

    history = [Message(role="user", content="why?"), message, Message(role="user", content="sure?")]
    second = await provider.chat(
        ChatRequest(model="m", messages=history, extra={"thinking": thinking}), ctx()
    )
    assert second.choices[0].message.content == "Echo: sure?"
    sent_back = fake.requests[-1].json["messages"][1]["content"][0]
    assert sent_back == {
        "type": "thinking",
        "thinking": "Let me think about that.",
        "signature": message.reasoning_signature,
    }

    tampered = msgspec.structs.replace(message, reasoning_content="Something else.")
    history[1] = tampered
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ChatRequest(model="m", messages=history, extra={"thinking": thinking}), ctx())
    assert "signature" in caught.value.message


async def test_max_tokens_and_stop_sequences(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    response = await provider.chat(ask("a b c d", max_tokens=2), ctx())
    assert (response.choices[0].message.content, response.choices[0].finish_reason) == ("Echo: a", "length")
    assert fake.requests[-1].json["max_tokens"] == 2

    response = await provider.chat(ask("one two STOP three", stop=["STOP"]), ctx())
    assert (response.choices[0].message.content, response.choices[0].finish_reason) == (
        "Echo: one two ",
        "stop",
    )
    assert fake.requests[-1].json["stop_sequences"] == ["STOP"]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
async def test_stop_reasons(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream, stop_reason: str | None, finish_reason: str
) -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": []}
    fake.enqueue(Fault(body=msgspec.json.encode({**message, "stop_reason": stop_reason})))
    response = await provider.chat(ask(), ctx())
    assert response.choices[0].finish_reason == finish_reason
    assert response.choices[0].message.content == ""


async def test_usage_with_prompt_cache(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    document = " ".join(f"w{i}" for i in range(30))
    system = [{"type": "text", "text": document, "cache_control": {"type": "ephemeral"}}]
    request = ChatRequest(
        model="m", messages=[Message(role="system", content=system), Message(role="user", content="q")]
    )
    written = await provider.chat(request, ctx())
    read = await provider.chat(request, ctx())
    assert fake.requests[-1].json["system"] == system  # cache_control survives the translation
    assert written.usage == Usage(
        prompt_tokens=31,
        completion_tokens=2,
        total_tokens=33,
        prompt_tokens_details={"cached_tokens": 0, "cache_creation_tokens": 30},
    )
    assert read.usage == Usage(
        prompt_tokens=31,
        completion_tokens=2,
        total_tokens=33,
        prompt_tokens_details={"cached_tokens": 30, "cache_creation_tokens": 0},
    )


async def test_redacted_thinking_and_server_tools_are_left_out(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    message = {
        "id": "msg_2",
        "model": "claude-x",
        "stop_reason": "end_turn",
        "content": [
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "text", "text": "Found it."},
        ],
        "usage": {"input_tokens": 10, "output_tokens": 3},
    }
    fake.enqueue(Fault(body=msgspec.json.encode(message)))
    response = await provider.chat(ask(), ctx())
    reply = response.choices[0].message
    assert (reply.content, reply.tool_calls, reply.reasoning_content) == ("Found it.", None, None)


async def test_tool_result_and_user_text_share_one_turn(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    call = ToolCall(id="toolu_x", function=ToolFunction(name="get_weather", arguments='{"location":"Rome"}'))
    history = [
        Message(role="user", content="weather in Rome?"),
        Message(role="assistant", content=None, tool_calls=[call]),
        Message(role="tool", tool_call_id="toolu_x", content="sunny"),
        Message(role="user", content="and tomorrow?"),
    ]
    response = await provider.chat(ChatRequest(model="m", messages=history, tools=TOOLS), ctx())
    assert response.choices[0].message.content == "Echo: sunny and tomorrow?"
    turn = fake.requests[-1].json["messages"][2]
    assert turn == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_x", "content": "sunny"},
            {"type": "text", "text": "and tomorrow?"},
        ],
    }
