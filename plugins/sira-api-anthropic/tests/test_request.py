"""Anthropic Messages bodies → kernel ChatRequest: the mapping and the 400s that name the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sira_kernel import Message, RequestError, ToolCall, ToolFunction

from sira_api_anthropic._request import decode_messages

PNG = "iVBORw0KGgo="


def decode(count_only: bool = False, **fields: Any) -> Any:
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}
    return decode_messages(json.dumps(body).encode(), count_only=count_only)


def rejected(body: bytes | dict[str, Any], count_only: bool = False) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as err:
        decode_messages(raw, count_only=count_only)
    assert err.value.status == 400
    return err.value.message


def test_plain_text_request() -> None:
    request = decode(stop_sequences=["END"], temperature=0.2, top_p=0.9, stream=True)
    assert request.model == "m" and request.max_tokens == 64 and request.stream
    assert request.messages == [Message(role="user", content="hi")]
    assert (request.stop, request.temperature, request.top_p) == (["END"], 0.2, 0.9)
    assert request.stream_options == {"include_usage": True}
    assert request.extra == {}


def test_system_string_and_text_blocks() -> None:
    assert decode(system="Be brief.").messages[0] == Message(role="system", content="Be brief.")
    blocks = [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]
    assert decode(system=blocks).messages[0] == Message(role="system", content="One.\nTwo.")
    assert decode(system="").messages[0].role == "user"


EPHEMERAL = {"type": "ephemeral"}


def test_cache_control_marks_are_kept_on_parts_results_and_tools() -> None:
    system = [{"type": "text", "text": "Long rules.", "cache_control": EPHEMERAL}, {"type": "text", "text": "More."}]
    content = [
        {"type": "tool_result", "tool_use_id": "t1", "content": "42", "cache_control": EPHEMERAL},
        {"type": "text", "text": "go on", "cache_control": EPHEMERAL},
    ]
    tools = [{"name": "f", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}]
    request = decode(system=system, tools=tools, messages=[{"role": "user", "content": content}])
    assert request.messages == [
        Message(role="system", content=[{"type": "text", "text": "Long rules.", "cache_control": EPHEMERAL},
                                        {"type": "text", "text": "More."}]),
        Message(role="tool", content=[{"type": "text", "text": "42", "cache_control": EPHEMERAL}], tool_call_id="t1"),
        Message(role="user", content=[{"type": "text", "text": "go on", "cache_control": EPHEMERAL}]),
    ]
    assert request.tools is not None and request.tools[0]["cache_control"] == EPHEMERAL

    body = {"model": "m", "max_tokens": 5, "system": system, "tools": tools,
            "messages": [{"role": "user", "content": content}]}
    dropped = decode_messages(json.dumps(body).encode(), cache_control=False)
    assert dropped.messages == [
        Message(role="system", content="Long rules.\nMore."),
        Message(role="tool", content="42", tool_call_id="t1"),
        Message(role="user", content="go on"),
    ]
    assert dropped.tools is not None and "cache_control" not in dropped.tools[0]


def test_user_blocks_become_content_parts() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
         "title": "spec.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain doc"}},
    ]
    [message] = decode(messages=[{"role": "user", "content": content}]).messages
    assert message.content == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "file", "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
        {"type": "text", "text": "plain doc"},
    ]


def test_a_single_text_block_is_plain_content() -> None:
    [message] = decode(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]).messages
    assert message == Message(role="user", content="hi")


def test_tool_results_become_tool_messages_before_the_rest_of_the_turn() -> None:
    content = [
        {"type": "text", "text": "here you go"},
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "22C"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
         "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "clock"}]},
        {"type": "tool_result", "tool_use_id": "toolu_3", "content": [
            {"type": "text", "text": "a chart"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
        {"type": "tool_result", "tool_use_id": "toolu_4"},
    ]
    messages = decode(messages=[{"role": "user", "content": content}]).messages
    assert messages == [
        Message(role="tool", content="22C", tool_call_id="toolu_1"),
        Message(role="tool", content="Error: no\nclock", tool_call_id="toolu_2"),
        Message(role="tool", content="a chart", tool_call_id="toolu_3"),
        Message(role="tool", content="", tool_call_id="toolu_4"),
        Message(role="user", content=[
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "text", "text": "here you go"},
        ]),
    ]


def test_a_turn_of_only_tool_results_adds_no_user_message() -> None:
    content = [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]
    assert [m.role for m in decode(messages=[{"role": "user", "content": content}]).messages] == ["tool"]


def test_assistant_blocks() -> None:
    content = [
        {"type": "thinking", "thinking": "Let me ", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "now."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
        {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}},
    ]
    [message] = decode(messages=[{"role": "assistant", "content": content}]).messages
    assert message == Message(
        role="assistant",
        content="Checking now.",
        tool_calls=[
            ToolCall(id="toolu_1", function=ToolFunction("get_weather", '{"city": "Paris", "days": [1, 2]}')),
            ToolCall(id="toolu_2", function=ToolFunction("noop", "{}")),
        ],
        reasoning_content="Let me ",
        reasoning_signature="sig-1",
    )


def test_assistant_tool_use_only_has_null_content_and_prefill_stays_exact() -> None:
    only_tools = [{"type": "tool_use", "id": "t", "name": "n", "input": {"a": 1}}]
    assert decode(messages=[{"role": "assistant", "content": only_tools}]).messages[0].content is None
    prefill = decode(messages=[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "The answer is ("}])
    assert prefill.messages[-1] == Message(role="assistant", content="The answer is (")


def test_tools_and_tool_choice() -> None:
    web_search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    tools = [
        {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}},
        {"type": "custom", "name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        web_search,
    ]
    request = decode(tools=tools)
    assert request.tools == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                          "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
        web_search,  # a server tool passes through whole, for an Anthropic upstream
    ]
    assert (request.tool_choice, request.parallel_tool_calls) == (None, None)
    cases = [
        ({"type": "auto"}, "auto", None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any"}, "required", None),
        ({"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
         {"type": "function", "function": {"name": "get_time"}}, False),
        ({"type": "none"}, "none", None),
    ]
    for choice, expected, parallel in cases:
        request = decode(tools=tools, tool_choice=choice)
        assert (request.tool_choice, request.parallel_tool_calls) == (expected, parallel), choice


def test_metadata_top_k_thinking_output_config_and_unknown_fields_pass_through() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    request = decode(
        metadata={"user_id": "u-1", "team": "x"}, top_k=40, thinking={"type": "enabled", "budget_tokens": 1024},
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": schema}},
        service_tier="auto", custom={"a": [1]},
    )
    assert request.user == "u-1"
    assert request.response_format == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert request.extra == {
        "service_tier": "auto", "custom": {"a": [1]}, "metadata": {"team": "x"}, "top_k": 40,
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "output_config": {"effort": "high"},
    }
    assert decode(metadata={"user_id": "u-1"}).extra == {}


def test_count_only_needs_no_max_tokens_and_passes_nothing_through() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "custom": 1}
    request = decode_messages(json.dumps(body).encode(), count_only=True)
    assert request.max_tokens is None and request.extra == {}
    assert rejected(body) == "max_tokens: Field required"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the request body is empty; send a JSON object"),
        (b"{nope", "the request body is not valid JSON"),
        (b"[]", "the request body must be a JSON object"),
        (b'"text"', "the request body must be a JSON object"),
        ({"messages": []}, "model: Field required"),
        ({"model": "m", "max_tokens": 1}, "messages: Field required"),
        ({"model": "m", "max_tokens": 1, "messages": []}, "messages: at least one message is required"),
        ({"model": "m", "max_tokens": 1.5, "messages": []}, "max_tokens: Expected `int | null`, got `float`"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "tool", "content": "x"}]},
         "messages.0.role: Invalid enum value 'tool'"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": []}]},
         "messages.0.content: at least one content block is required"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
         "messages.0.content.0.type: Invalid value 'audio'"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
         "messages.0.content.0.type: Field required"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
         "messages.0.content.0.source.type: Invalid value 'file'"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]},
         "messages.0.content.0.source: documents by URL are not supported here"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "thinking", "thinking": "x"}]}]},
         "messages.0.content.0: 'thinking' blocks are only allowed in assistant messages"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": [
            {"type": "tool_result", "tool_use_id": "t"}]}]},
         "messages.0.content.0: 'tool_result' blocks are only allowed in user messages"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "n", "input": "x"}]}]},
         "messages.0.content.0.input: Input should be an object"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "n"}]}]},
         "messages.0.content.0.input: Field required"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "t"}]},
         "tools.0.input_schema: Field required"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
          "tools": [{"input_schema": {}}]}, "tools.0.name: Field required"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
          "tools": [{"name": "t", "input_schema": "{}"}]}, "tools.0.input_schema: Input has the wrong type"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
          "tools": [{"name": "t", "input_schema": {}, "description": 5}]},
         "tools.0.description: Input has the wrong type"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "tools": ["t"]},
         "tools.0: Expected `object`, got `str`"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
          "tool_choice": {"type": "tool"}}, "tool_choice.name: Field required"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
          "metadata": {"user_id": 7}}, "metadata.user_id: Input should be a valid string"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
          "output_config": {"format": {"type": "json_object"}}}, "output_config.format: expected"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "stop_sequences": "END"},
         "stop_sequences: Expected `array | null`, got `str`"),
    ],
)
def test_invalid_bodies_are_400s_naming_the_field(body: bytes | dict[str, Any], message: str) -> None:
    assert rejected(body).startswith(message)


def test_the_param_is_the_dotted_path() -> None:
    with pytest.raises(RequestError) as err:
        decode(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])
    assert err.value.param == "messages.0.content.0.text"
