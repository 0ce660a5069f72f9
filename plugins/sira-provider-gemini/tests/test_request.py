"""Translating the kernel's OpenAI-shaped requests into Gemini bodies, feature by feature (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sira_kernel.types import ChatRequest, EmbeddingRequest, Message, ToolCall, ToolFunction

from sira_provider_gemini import GeminiConfig, SafetySetting
from sira_provider_gemini._request import TranslationError, embedding_texts, encode_chat, encode_embeddings

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
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


def body(*messages: Message, config: GeminiConfig | None = None, **fields: Any) -> dict[str, Any]:
    request = ChatRequest(model="m", messages=list(messages), **fields)
    decoded: dict[str, Any] = json.loads(encode_chat(request, config or GeminiConfig()))
    return decoded


def user(content: Any) -> Message:
    return Message(role="user", content=content)


def call(call_id: str, name: str, arguments: str = "{}") -> ToolCall:
    return ToolCall(id=call_id, function=ToolFunction(name=name, arguments=arguments))


# -- roles and turns --------------------------------------------------------------------------------


def test_roles_system_and_merging() -> None:
    sent = body(
        Message(role="system", content="Be brief."),
        user("first"),
        user([{"type": "text", "text": "second"}]),
        Message(role="developer", content="Answer in French."),
        Message(role="assistant", content="d'accord"),
        Message(role="assistant", content=[{"type": "text", "text": "encore"}]),
        user("third"),
    )
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]}
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "first"}, {"text": "second"}]},
        {"role": "model", "parts": [{"text": "d'accord"}, {"text": "encore"}]},
        {"role": "user", "parts": [{"text": "third"}]},
    ]
    assert set(sent) == {"contents", "systemInstruction"}


def test_empty_messages_are_left_out_and_only_system_is_refused() -> None:
    sent = body(user("hi"), Message(role="assistant", content=""), user(""), user("again"))
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "hi"}, {"text": "again"}]}]
    with pytest.raises(TranslationError) as caught:
        body(Message(role="system", content="alone"))
    assert caught.value.param == "messages"


def test_unknown_role_and_non_text_system_prompt_are_refused() -> None:
    with pytest.raises(TranslationError, match="has no Gemini equivalent"):
        body(Message(role="critic", content="x"))
    image = {"type": "image_url", "image_url": {"url": "https://x/a.png"}}
    with pytest.raises(TranslationError, match="only text parts"):
        body(Message(role="system", content=[image]), user("hi"))


def test_reasoning_content_is_not_sent_back() -> None:
    sent = body(user("q"), Message(role="assistant", content="a", reasoning_content="private"), user("q2"))
    assert sent["contents"][1] == {"role": "model", "parts": [{"text": "a"}]}


# -- tool calls and results -------------------------------------------------------------------------


def test_tool_round_trip_names_results_after_their_call() -> None:
    sent = body(
        user("weather and time?"),
        Message(
            role="assistant",
            tool_calls=[call("call_0", "get_weather", '{"location": "Paris"}'), call("call_1", "get_time")],
        ),
        Message(role="tool", tool_call_id="call_0", content='{"temp": 21}'),
        Message(role="tool", tool_call_id="call_1", content="12:00"),
        user("thanks"),
    )
    model_turn, results = sent["contents"][1], sent["contents"][2]
    assert model_turn == {
        "role": "model",
        "parts": [
            # The ids were made up by the adapter (Gemini gave none), so they are not sent back; the
            # fallback signature lets Gemini 3 accept a history whose real signature was lost.
            {
                "functionCall": {"name": "get_weather", "args": {"location": "Paris"}},
                "thoughtSignature": "skip_thought_signature_validator",
            },
            {"functionCall": {"name": "get_time", "args": {}}},
        ],
    }
    assert results == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
            {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}}},
            {"text": "thanks"},
        ],
    }


def test_gemini_call_ids_go_back_and_the_latest_call_with_an_id_names_the_result() -> None:
    sent = body(
        user("a"),
        Message(role="assistant", tool_calls=[call("fc-1", "first")]),
        Message(role="tool", tool_call_id="fc-1", content="[1, 2]"),
        Message(role="assistant", tool_calls=[call("fc-1", "second")]),  # an id reused in a later turn
        Message(role="tool", tool_call_id="fc-1", content="null"),
    )
    assert sent["contents"][1]["parts"][0]["functionCall"]["id"] == "fc-1"
    assert sent["contents"][2]["parts"] == [
        {"functionResponse": {"name": "first", "response": {"output": [1, 2]}, "id": "fc-1"}}
    ]
    assert sent["contents"][4]["parts"][0]["functionResponse"]["name"] == "second"
    assert sent["contents"][4]["parts"][0]["functionResponse"]["response"] == {"output": None}


def test_tool_result_for_an_unknown_call() -> None:
    with pytest.raises(TranslationError) as caught:
        body(user("a"), Message(role="tool", tool_call_id="call_9", content="x"))
    assert caught.value.param == "messages[1].tool_call_id"
    # A legacy ``function`` message names itself.
    sent = body(user("a"), Message(role="function", name="lookup", content='{"ok": true}'))
    assert sent["contents"][0]["parts"][1] == {
        "functionResponse": {"name": "lookup", "response": {"ok": True}}
    }


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    with pytest.raises(TranslationError) as caught:
        body(user("a"), Message(role="assistant", tool_calls=[call("c", "f", arguments)]))
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def test_thought_signatures_go_back_where_gemini_put_them() -> None:
    signed_call = Message(role="assistant", tool_calls=[call("call_0", "f")], reasoning_signature="c2ln")
    signed_text = Message(role="assistant", content="answer", reasoning_signature="dGV4dA==")
    sent = body(user("a"), signed_call, Message(role="tool", tool_call_id="call_0", content="1"), signed_text)
    assert sent["contents"][1]["parts"][0]["thoughtSignature"] == "c2ln"
    assert sent["contents"][3]["parts"][-1] == {"text": "answer", "thoughtSignature": "dGV4dA=="}

    unsigned = Message(role="assistant", tool_calls=[call("call_0", "f")])
    tool = Message(role="tool", tool_call_id="call_0", content="1")
    sent = body(user("a"), unsigned, tool, config=GeminiConfig(thought_signature_fallback=""))
    assert "thoughtSignature" not in sent["contents"][1]["parts"][0]


# -- content parts ----------------------------------------------------------------------------------


def test_images_audio_and_files() -> None:
    parts = [
        {"type": "text", "text": "what are these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?size=large"}},
        {"type": "image_url", "image_url": "https://generativelanguage.googleapis.com/v1beta/files/abc123"},
        {"type": "image_url", "image_url": {"url": "gs://bucket/diagram.webp"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]
    assert body(user(parts))["contents"][0]["parts"] == [
        {"text": "what are these?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://example.com/cat.JPG?size=large", "mimeType": "image/jpeg"}},
        {"fileData": {"fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc123"}},
        {"fileData": {"fileUri": "gs://bucket/diagram.webp", "mimeType": "image/webp"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, "must be base64"),
        ({"type": "image_url", "image_url": {"url": "data:;base64,AAAA"}}, "with a media type"),
        ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, "only data:, http"),
        ({"type": "image_url", "image_url": {}}, "must be a string"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "only inline file_data"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA"}}, "needs base64 data and a format"),
        ({"type": "video_url", "video_url": "x"}, "'video_url' has no Gemini equivalent"),
    ],
)
def test_unsupported_content_parts_are_refused_by_name(part: dict[str, Any], message: str) -> None:
    with pytest.raises(TranslationError, match=message) as caught:
        body(user([part]))
    assert caught.value.param == "messages[0].content[0]"


# -- tools and tool choice --------------------------------------------------------------------------


def test_function_declarations_drop_what_gemini_refuses() -> None:
    no_params = {
        "type": "function",
        "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
    }
    bare = {"type": "function", "function": {"name": "ping"}}
    sent = body(user("hi"), tools=[WEATHER, no_params, bare])
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"location": {"type": "string", "description": "A city name"}},
                        "required": ["location"],
                    },
                },
                {"name": "now"},  # Gemini refuses an object schema with empty properties
                {"name": "ping"},
            ]
        }
    ]
    assert "toolConfig" not in sent


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    sent = body(user("hi"), tools=[WEATHER], tool_choice=choice, parallel_tool_calls=False)
    assert sent["toolConfig"] == {"functionCallingConfig": config}


def test_bad_tools() -> None:
    with pytest.raises(TranslationError, match="tool_choice"):
        body(user("hi"), tools=[WEATHER], tool_choice={"type": "function", "function": {}})
    with pytest.raises(TranslationError, match="function tools only"):
        body(user("hi"), tools=[{"type": "web_search"}])
    with pytest.raises(TranslationError, match="name is required"):
        body(user("hi"), tools=[{"type": "function", "function": {}}])
    recursive = {
        "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
        "$ref": "#/$defs/n",
    }
    with pytest.raises(TranslationError, match="recursive") as caught:
        body(user("hi"), tools=[{"type": "function", "function": {"name": "f", "parameters": recursive}}])
    assert caught.value.param == "tools[0]"


def test_native_gemini_tools_pass_through_when_allowed() -> None:
    tools = [WEATHER, {"googleSearch": {}}]
    sent = body(user("hi"), tools=tools)
    assert sent["tools"][1:] == [{"googleSearch": {}}]
    with pytest.raises(TranslationError):
        body(user("hi"), tools=tools, config=GeminiConfig(passthrough_fields=False))


# -- generation config ------------------------------------------------------------------------------


def test_generation_config_fields() -> None:
    sent = body(
        user("hi"),
        temperature=0.2,
        top_p=0.9,
        max_tokens=10,
        max_completion_tokens=20,  # wins over max_tokens, as in OpenAI
        stop="END",
        n=2,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        user="end-user-1",
        stream_options={"include_usage": True},
    )
    assert sent["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 20,
        "stopSequences": ["END"],
        "candidateCount": 2,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
    }
    assert set(sent) == {"contents", "generationConfig"}  # user, logprobs, stream_options: nowhere to go


def test_response_formats() -> None:
    assert "generationConfig" not in body(user("hi"), response_format={"type": "text"})
    json_object = body(user("hi"), response_format={"type": "json_object"})
    assert json_object["generationConfig"] == {"responseMimeType": "application/json"}
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": ["string", "null"]},
            "when": {"type": "string", "format": "date-time"},
        },
        "required": ["city", "when"],
        "additionalProperties": False,
    }
    json_schema = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}
    assert body(user("hi"), response_format=json_schema)["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "nullable": True},
                "when": {"type": "string", "format": "date-time"},
            },
            "required": ["city", "when"],
        },
    }
    with pytest.raises(TranslationError) as caught:
        body(user("hi"), response_format={"type": "grammar"})
    assert caught.value.param == "response_format"


def test_thinking_and_known_extras() -> None:
    config = GeminiConfig(include_thoughts=True)
    sent = body(
        user("hi"), config=config, extra={"reasoning_effort": "low", "top_k": 40, "metadata": {"a": 1}}
    )
    assert sent["generationConfig"] == {
        "topK": 40,
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 1024},
    }
    assert "metadata" not in sent  # OpenAI-only extras are never sent to Gemini
    with pytest.raises(TranslationError) as caught:
        body(user("hi"), extra={"reasoning_effort": "extreme"})
    assert caught.value.param == "reasoning_effort"


def test_native_fields_pass_through_and_win() -> None:
    config = GeminiConfig(
        include_thoughts=True,
        safety_settings=[SafetySetting(category="HARM_CATEGORY_HARASSMENT", threshold="BLOCK_ONLY_HIGH")],
    )
    extra = {
        "generationConfig": {"topK": 3, "temperature": 1.0, "thinkingConfig": {"thinkingBudget": 0}},
        "cachedContent": "cachedContents/abc",
        "toolConfig": {"retrievalConfig": {"languageCode": "fr"}},
    }
    sent = body(user("hi"), config=config, temperature=0.1, tools=[WEATHER], tool_choice="auto", extra=extra)
    assert sent["generationConfig"] == {
        "temperature": 1.0,
        "topK": 3,
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 0},
    }
    assert sent["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
    ]
    assert sent["cachedContent"] == "cachedContents/abc"
    assert sent["toolConfig"] == {
        "functionCallingConfig": {"mode": "AUTO"},
        "retrievalConfig": {"languageCode": "fr"},
    }
    own = body(user("hi"), config=config, extra={"safetySettings": []})
    assert own["safetySettings"] == []  # the client's own settings replace the configured ones


def test_passthrough_off_sends_no_extras() -> None:
    config = GeminiConfig(passthrough_fields=False)
    extra = {"generationConfig": {"topK": 3}, "top_k": 5, "reasoning_effort": "high", "cachedContent": "c"}
    assert body(user("hi"), config=config, extra=extra) == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}]
    }


# -- embeddings -------------------------------------------------------------------------------------


def test_embedding_requests() -> None:
    request = EmbeddingRequest(
        model="e", input=["a", "b"], dimensions=4, extra={"task_type": "RETRIEVAL_QUERY"}
    )
    sent = json.loads(
        encode_embeddings(embedding_texts(request), request, model="models/e", passthrough=True)
    )
    assert sent == {
        "requests": [
            {
                "model": "models/e",
                "content": {"parts": [{"text": t}]},
                "outputDimensionality": 4,
                "taskType": "RETRIEVAL_QUERY",
            }
            for t in ("a", "b")
        ]
    }
    assert embedding_texts(EmbeddingRequest(model="e", input="one")) == ["one"]
    for bad in ([], [[1, 2, 3]], [""]):
        with pytest.raises(TranslationError):
            embedding_texts(EmbeddingRequest(model="e", input=bad))
