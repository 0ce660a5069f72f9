"""The request body produced for each feature: kernel ChatRequest → Anthropic Messages body."""

from __future__ import annotations

from typing import Any

import pytest
from sira_kernel.types import ChatRequest, Message, ToolCall, ToolFunction

from sira_provider_anthropic import AnthropicConfig, UnsupportedRequest, to_anthropic

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def body(*messages: Message, config: AnthropicConfig | None = None, **fields: Any) -> dict[str, Any]:
    request = ChatRequest(model="public", messages=list(messages), **fields)
    return to_anthropic(request, model="claude-sonnet-4-5", stream=False, config=config or AnthropicConfig())


def user(content: Any) -> Message:
    return Message(role="user", content=content)


def test_minimal_request() -> None:
    assert body(user("hi")) == {
        "model": "claude-sonnet-4-5",  # the routed upstream model, not the public one
        "max_tokens": 4096,  # Anthropic requires it: the configured default when the client set none
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_stream_flag() -> None:
    request = ChatRequest(
        model="m", messages=[user("hi")], stream=True, stream_options={"include_usage": True}
    )
    sent = to_anthropic(request, model="m", stream=True, config=AnthropicConfig())
    assert sent["stream"] is True
    assert "stream_options" not in sent  # Anthropic always streams usage


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 70, "max_tokens": 50}, 70),
        ({}, 1000),
    ],
)
def test_max_tokens(fields: dict[str, Any], expected: int) -> None:
    assert (
        body(user("hi"), config=AnthropicConfig(default_max_tokens=1000), **fields)["max_tokens"] == expected
    )


def test_system_and_developer_messages_become_top_level_text_blocks() -> None:
    sent = body(
        Message(role="system", content="You are terse."),
        Message(role="developer", content=[{"type": "text", "text": "Answer in French."}]),
        user("hi"),
        Message(role="system", content="Late instruction."),
    )
    assert sent["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in French."},
        {"type": "text", "text": "Late instruction."},
    ]
    assert [turn["role"] for turn in sent["messages"]] == ["user"]


def test_system_prompt_takes_text_only() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(UnsupportedRequest, match="text only"):
        body(Message(role="system", content=[image]), user("hi"))


def test_multi_turn_and_same_role_merging() -> None:
    sent = body(
        user("one"),
        user([{"type": "text", "text": "two"}, {"type": "text", "text": ""}]),  # empty text is dropped
        Message(role="assistant", content="three"),
        Message(role="assistant", content=""),  # an empty turn is dropped, not sent
        Message(role="assistant", content="four"),
        user("five"),
    )
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
        {"role": "user", "content": [{"type": "text", "text": "five"}]},
    ]


def test_images_data_url_and_http_url() -> None:
    sent = body(
        user(
            [
                {"type": "text", "text": "compare"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "image_url", "image_url": "http://example.com/dog.gif"},  # a bare string URL
            ]
        )
    )
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "url", "url": "http://example.com/dog.gif"}},
    ]


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "data:image/png,notbase64", "data:;base64,AAAA", "file:///etc/passwd"]
)
def test_unusable_image_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsupportedRequest) as caught:
        body(user([{"type": "image_url", "image_url": {"url": url}}]))
    assert caught.value.param == "messages"


def test_pdf_and_text_files_become_documents() -> None:
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}
    text = {"type": "file", "file": {"file_data": "data:text/plain;base64,aGVsbG8="}}
    blocks = body(user([pdf, text]))["messages"][0]["content"]
    assert blocks == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
            "title": "a.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello"}},
    ]
    with pytest.raises(UnsupportedRequest, match="file id"):
        body(user([{"type": "file", "file": {"file_id": "file-abc"}}]))


def test_audio_is_refused_and_native_blocks_pass_through() -> None:
    with pytest.raises(UnsupportedRequest, match="audio"):
        body(user([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]))
    native = {"type": "search_result", "source": "https://x", "title": "t", "content": []}
    cached = {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}
    assert body(user([native, cached]))["messages"][0]["content"] == [native, cached]


def test_tools_and_tool_choice() -> None:
    native = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    bare = {"type": "function", "function": {"name": "ping"}}
    sent = body(user("weather?"), tools=[WEATHER, bare, native], tool_choice="required")
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the weather",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
        native,
    ]
    assert sent["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, None, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    sent = body(user("hi"), tools=[WEATHER], tool_choice=choice, parallel_tool_calls=parallel)
    assert sent.get("tool_choice") == expected


def test_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in body(user("hi"), tool_choice="auto")


def test_assistant_tool_calls_and_tool_results() -> None:
    calls = [
        ToolCall(id="toolu_1", function=ToolFunction(name="get_weather", arguments='{"location": "Paris"}')),
        ToolCall(id="toolu_2", function=ToolFunction(name="ping", arguments="")),
    ]
    sent = body(
        user("weather and ping?"),
        Message(role="assistant", content="Checking.", tool_calls=calls),
        Message(role="tool", tool_call_id="toolu_1", content="18 degrees"),
        Message(role="tool", tool_call_id="toolu_2", content=[{"type": "text", "text": "pong"}]),
        user("thanks"),
    )
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "ping", "input": {}},
            ],
        },
        {
            "role": "user",  # consecutive tool results grouped into one user turn, with the next user text
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "pong"}],
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


@pytest.mark.parametrize("arguments", ['{"location": ', "[1, 2]", '"text"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = ToolCall(id="t", function=ToolFunction(name="f", arguments=arguments))
    with pytest.raises(UnsupportedRequest, match=r"messages\[1\]\.tool_calls\[0\]\.function\.arguments"):
        body(user("hi"), Message(role="assistant", tool_calls=[call]))


def test_tool_message_needs_its_call_id() -> None:
    with pytest.raises(UnsupportedRequest, match="tool_call_id"):
        body(user("hi"), Message(role="tool", content="x"))


def test_reasoning_with_a_signature_goes_back_as_a_thinking_block_first() -> None:
    signed = Message(role="assistant", content="21", reasoning_content="Euclid...", reasoning_signature="sig")
    unsigned = Message(role="assistant", content="42", reasoning_content="no signature")
    sent = body(user("gcd?"), signed, user("and?"), unsigned)
    assert sent["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Euclid...", "signature": "sig"},
        {"type": "text", "text": "21"},
    ]
    assert sent["messages"][3]["content"] == [{"type": "text", "text": "42"}]


def test_sampling_stop_and_user() -> None:
    sent = body(
        user("hi"), temperature=0.2, top_p=0.9, stop="END", user="user-7", seed=3, presence_penalty=1.0
    )
    assert (sent["temperature"], sent["top_p"], sent["stop_sequences"]) == (0.2, 0.9, ["END"])
    assert sent["metadata"] == {"user_id": "user-7"}
    assert "seed" not in sent and "presence_penalty" not in sent  # Anthropic has neither
    assert body(user("hi"), stop=["a", "b"])["stop_sequences"] == ["a", "b"]


def test_passthrough_allowlist() -> None:
    extra = {
        "top_k": 5,
        "service_tier": "auto",
        "metadata": {"trace": "x"},
        "reasoning_effort": "high",  # OpenAI-only: Anthropic would reject it, so it is dropped
        "model": "claude-opus-4-1",  # never lets a client replace the routed model
        "max_tokens": 1,
    }
    sent = body(user("hi"), extra=extra)
    assert sent["top_k"] == 5 and sent["service_tier"] == "auto" and sent["metadata"] == {"trace": "x"}
    assert "reasoning_effort" not in sent
    assert sent["model"] == "claude-sonnet-4-5" and sent["max_tokens"] == 4096
    # The modelled user wins over a pass-through metadata.user_id, and the rest of metadata is kept.
    merged = body(user("hi"), user="u1", extra={"metadata": {"user_id": "spoof", "trace": "x"}})
    assert merged["metadata"] == {"user_id": "u1", "trace": "x"}
    none_allowed = body(user("hi"), extra={"top_k": 5}, config=AnthropicConfig(passthrough_fields=[]))
    assert "top_k" not in none_allowed


def test_thinking_from_the_request_or_the_config() -> None:
    enabled = {"type": "enabled", "budget_tokens": 2048}
    assert body(user("hi"), extra={"thinking": enabled})["thinking"] == enabled
    configured = AnthropicConfig(thinking={"type": "enabled", "budget_tokens": 8000})
    sent = body(user("hi"), config=configured)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 8000}
    assert sent["max_tokens"] == 8000 + 4096  # above the budget, leaving the default for the answer
    disabled = body(user("hi"), config=configured, extra={"thinking": {"type": "disabled"}})
    assert disabled["thinking"] == {"type": "disabled"}  # the request's own setting wins
    assert body(user("hi"), config=configured, max_tokens=9000)["max_tokens"] == 9000


def test_refused_openai_features() -> None:
    with pytest.raises(UnsupportedRequest) as caught:
        body(user("hi"), n=2)
    assert caught.value.param == "n"
    with pytest.raises(UnsupportedRequest) as caught:
        body(user("hi"), response_format={"type": "json_object"})
    assert caught.value.param == "response_format"
    assert "response_format" not in body(user("hi"), response_format={"type": "text"}, n=1)
    with pytest.raises(UnsupportedRequest, match="role 'function'"):
        body(Message(role="function", content="x"))
