"""Non-streamed chat, tools, images, thinking and embeddings against the fake Gemini API, over real HTTP."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from sira_kernel.errors import ProviderRejected
from sira_kernel.providers import CallContext
from sira_kernel.routing import Deployment, RouteTable
from sira_kernel.testing.fake_gemini import THOUGHT_SIGNATURE, FakeGeminiUpstream, GeminiFault
from sira_kernel.testing.providers import OpenProvider, call_context
from sira_kernel.testing.providers import chat_request as ask
from sira_kernel.types import ChatRequest, EmbeddingRequest, Message, ModelInfo, ToolCall, ToolFunction, Usage

from sira_provider_gemini import GeminiProvider, _provider

pytestmark = pytest.mark.anyio


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
    for name in ("get_weather", "get_time")
]


def ctx(model: str = "gemini-2.0-flash", **limits: Any) -> CallContext:
    return call_context(model, **limits)


async def test_text_reply_usage_url_and_key(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    request = ChatRequest(
        model="public-model",
        messages=[Message(role="system", content="Be kind."), Message(role="user", content="hello there")],
    )
    response = await provider.chat(request, ctx("gemini-2.5-flash"))

    [choice] = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: hello there"
    assert choice.finish_reason == "stop"
    assert (response.id, response.model) == ("fake-gemini-1", "gemini-2.5-flash")
    assert response.usage == Usage(
        prompt_tokens=4,
        completion_tokens=3,
        total_tokens=7,
        prompt_tokens_details={"cached_tokens": 0},
        completion_tokens_details={"reasoning_tokens": 0},
    )
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.query) == (
        "POST",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        {},
    )
    assert sent.headers["x-goog-api-key"] == fake.api_key
    assert "authorization" not in sent.headers
    assert sent.json == {
        "contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
        "systemInstruction": {"parts": [{"text": "Be kind."}]},
    }


async def test_config_headers_api_version_and_tuned_models(
    open_provider: OpenProvider, fake: FakeGeminiUpstream
) -> None:
    async with open_provider(api_version="v1alpha", headers={"X-Team": "blue"}) as provider:
        await provider.chat(ask(), ctx("tunedModels/my-tuned-1"))
    sent = fake.requests[-1]
    assert sent.path == "/v1alpha/tunedModels/my-tuned-1:generateContent"
    assert sent.headers["x-team"] == "blue"
    assert sent.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "model", ["..", "../files/x", "a/b", "m:streamGenerateContent", "m?key=1", "", "x" * 200]
)
async def test_model_name_cannot_change_the_url(
    provider: GeminiProvider, fake: FakeGeminiUpstream, model: str
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(), ctx(model))
    assert caught.value.status == 400
    assert fake.requests == []


async def test_candidates_max_tokens_and_json_mode(
    provider: GeminiProvider, fake: FakeGeminiUpstream
) -> None:
    response = await provider.chat(ask("one two", n=3), ctx())
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert {c.message.content for c in response.choices} == {"Echo: one two"}
    assert response.usage is not None and response.usage.completion_tokens == 9

    cut = await provider.chat(ask("a b c d", max_tokens=2), ctx())
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("Echo: a", "length")
    assert fake.requests[-1].json["generationConfig"] == {"maxOutputTokens": 2}

    structured = await provider.chat(ask("hi", response_format={"type": "json_object"}), ctx())
    assert json.loads(structured.choices[0].message.content or "") == {"reply": "Echo: hi"}


async def test_images_reach_gemini_as_parts(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    response = await provider.chat(
        ChatRequest(model="m", messages=[Message(role="user", content=parts)]), ctx()
    )
    assert response.choices[0].message.content == "Echo: what is this"
    assert fake.requests[-1].json["contents"][0]["parts"][1:] == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://example.com/cat.png", "mimeType": "image/png"}},
    ]


async def test_thoughts_become_reasoning_and_usage_counts_them(
    open_provider: OpenProvider, fake: FakeGeminiUpstream
) -> None:
    fake.cached_tokens = 2
    async with open_provider(include_thoughts=True) as provider:
        response = await provider.chat(ask("why is the sky blue"), ctx("gemini-2.5-flash"))
    message = response.choices[0].message
    assert message.reasoning_content == "Let me think about that."
    assert message.content == "Echo: why is the sky blue"
    assert response.usage == Usage(
        prompt_tokens=5,
        completion_tokens=6 + 5,  # OpenAI counts reasoning inside completion tokens; Gemini apart
        total_tokens=16,
        prompt_tokens_details={"cached_tokens": 2},
        completion_tokens_details={"reasoning_tokens": 5},
    )
    assert fake.requests[-1].json["generationConfig"] == {"thinkingConfig": {"includeThoughts": True}}


# -- function calling -------------------------------------------------------------------------------


async def test_single_tool_call(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    response = await provider.chat(ask("weather?", tools=TOOLS[:1], tool_choice="required"), ctx())
    [choice] = response.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls == [
        ToolCall(id="call_0", function=_fn("get_weather", {"location": "Paris"}))
    ]
    sent = fake.requests[-1].json
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert "additionalProperties" not in json.dumps(sent)  # else the real API (and the fake) answer 400


async def test_parallel_tool_calls_keep_their_order(provider: GeminiProvider) -> None:
    response = await provider.chat(ask("weather and time?", tools=TOOLS), ctx())
    calls = response.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_0", "get_weather", {"location": "Paris"}),
        ("call_1", "get_time", {"location": "Tokyo"}),
    ]
    named = await provider.chat(
        ask("time?", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}), ctx()
    )
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["get_time"]


async def test_tool_results_round_trip(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    first = await provider.chat(ask("weather and time?", tools=TOOLS), ctx())
    calls = first.choices[0].message.tool_calls or []
    history = [
        Message(role="user", content="weather and time?"),
        first.choices[0].message,
        Message(role="tool", tool_call_id=calls[0].id, content='{"temp": 21, "sky": "clear"}'),
        Message(role="tool", tool_call_id=calls[1].id, content="09:30"),
    ]
    second = await provider.chat(ChatRequest(model="m", messages=history, tools=TOOLS), ctx())
    assert second.choices[0].message.content == (
        'Results: get_weather={"sky":"clear","temp":21}; get_time={"output":"09:30"}'
    )
    assert second.choices[0].finish_reason == "stop"
    sent = fake.requests[-1].json["contents"]
    assert [c["role"] for c in sent] == ["user", "model", "user"]  # both results in one turn, as Gemini wants


async def test_gemini_call_ids_and_thought_signatures_round_trip(
    open_provider: OpenProvider, fake: FakeGeminiUpstream
) -> None:
    with FakeGeminiUpstream(api_key=fake.api_key, call_ids=True, require_thought_signatures=True) as strict:
        async with open_provider(
            base_url=strict.base_url, include_thoughts=True, thought_signature_fallback=""
        ) as provider:
            first = await provider.chat(ask("weather?", tools=TOOLS[:1]), ctx("gemini-3-pro"))
            message = first.choices[0].message
            assert message.reasoning_signature == THOUGHT_SIGNATURE
            [call] = message.tool_calls or []
            assert call.id == "fc-fake-gemini-1-0"
            history = [
                Message(role="user", content="weather?"),
                message,
                Message(role="tool", tool_call_id=call.id, content='{"temp": 3}'),
            ]
            second = await provider.chat(
                ChatRequest(model="m", messages=history, tools=TOOLS[:1]), ctx("gemini-3-pro")
            )
            assert second.choices[0].message.content == 'Results: get_weather={"temp":3}'
            model_turn = strict.requests[-1].json["contents"][1]["parts"][0]
            assert model_turn["thoughtSignature"] == THOUGHT_SIGNATURE
            assert model_turn["functionCall"]["id"] == "fc-fake-gemini-1-0"

            # A client that dropped the signature (OpenAI's format has no field for it) gets Gemini 3's 400…
            unsigned = [history[0], Message(role="assistant", tool_calls=message.tool_calls), history[2]]
            with pytest.raises(ProviderRejected, match="thought_signature") as caught:
                await provider.chat(
                    ChatRequest(model="m", messages=unsigned, tools=TOOLS[:1]), ctx("gemini-3-pro")
                )
            assert caught.value.status == 400
        # … unless the fallback signature (the default) is sent in its place.
        async with open_provider(base_url=strict.base_url) as provider:
            third = await provider.chat(
                ChatRequest(model="m", messages=unsigned, tools=TOOLS[:1]), ctx("gemini-3-pro")
            )
        assert third.choices[0].message.content == 'Results: get_weather={"temp":3}'


# -- blocks -----------------------------------------------------------------------------------------


async def test_safety_block_is_a_content_filter_finish(
    provider: GeminiProvider, fake: FakeGeminiUpstream
) -> None:
    fake.enqueue(GeminiFault(safety_block="SAFETY"), GeminiFault(safety_block="RECITATION"))
    for _ in range(2):
        response = await provider.chat(ask("something risky"), ctx())
        [choice] = response.choices
        assert choice.finish_reason == "content_filter"
        assert choice.message.content is None and choice.message.tool_calls is None


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "OTHER"])
async def test_blocked_prompt_is_a_400_naming_the_reason(
    provider: GeminiProvider, fake: FakeGeminiUpstream, reason: str
) -> None:
    fake.enqueue(GeminiFault(prompt_block=reason))
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask("something bad"), ctx())
    error = caught.value
    assert (error.status, error.code, error.provider) == (400, "content_filter", "gemini")
    assert reason in error.message and "blocked the prompt" in error.message
    assert not error.retryable


# -- models -----------------------------------------------------------------------------------------


async def test_models_and_aliases(open_provider: OpenProvider, fake: FakeGeminiUpstream) -> None:
    async with open_provider(
        models=["gemini-2.0-flash"],
        embedding_models=["text-embedding-004"],
        aliases={"fast": "gemini-2.0-flash", "embed": "text-embedding-004"},
    ) as provider:
        assert provider.models() == [
            ModelInfo(id="gemini-2.0-flash", owned_by="google", upstream="gemini-2.0-flash"),
            ModelInfo(
                id="text-embedding-004", owned_by="google", upstream="text-embedding-004", kind="embedding"
            ),
            ModelInfo(id="fast", owned_by="google", upstream="gemini-2.0-flash"),
            ModelInfo(id="embed", owned_by="google", upstream="text-embedding-004", kind="embedding"),
        ]
        [deployment] = RouteTable({"gemini": provider}).lookup("fast")
        assert deployment == Deployment("gemini", "gemini-2.0-flash")
        await provider.chat(ask(), ctx(deployment.model))
    assert fake.requests[-1].path == "/v1beta/models/gemini-2.0-flash:generateContent"


async def test_discover_models_follows_pages(
    open_provider: OpenProvider, fake: FakeGeminiUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_provider, "MODEL_PAGE_SIZE", 2)
    fake.models = ["gemini-2.0-flash", "gemini-2.5-pro", "text-embedding-004", "gemini-2.5-flash"]
    async with open_provider(models=["local"]) as provider:
        found = await provider.discover(timeout=5)
        kinds = {m.id: m.kind for m in provider.models()}
    assert found == fake.models
    assert kinds == {
        "local": "chat",
        "gemini-2.0-flash": "chat",
        "gemini-2.5-pro": "chat",
        "text-embedding-004": "embedding",
        "gemini-2.5-flash": "chat",
    }
    pages = [r for r in fake.requests if r.method == "GET"]
    assert [r.query.get("pageToken") for r in pages] == [None, "2"]
    assert all(r.path == "/v1beta/models" and "key" not in r.query for r in pages)


# -- embeddings -------------------------------------------------------------------------------------


async def test_embeddings(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    request = EmbeddingRequest(
        model="public", input=["hello world", "bye"], dimensions=4, extra={"task_type": "CLUSTERING"}
    )
    response = await provider.embed(request, ctx("text-embedding-004"))
    assert [d.index for d in response.data] == [0, 1]
    assert all(isinstance(d.embedding, list) and len(d.embedding) == 4 for d in response.data)
    assert response.model == "text-embedding-004"
    assert response.usage == Usage(prompt_tokens=3 + 1, total_tokens=4)  # about four characters a token
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert sent.json["requests"][0] == {
        "model": "models/text-embedding-004",
        "content": {"parts": [{"text": "hello world"}]},
        "outputDimensionality": 4,
        "taskType": "CLUSTERING",
    }


async def test_embeddings_base64_and_large_inputs(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    single = await provider.embed(
        EmbeddingRequest(model="e", input="hello", encoding_format="base64"), ctx("text-embedding-004")
    )
    [item] = single.data
    assert isinstance(item.embedding, str)
    assert len(struct.unpack("<8f", base64.b64decode(item.embedding))) == 8

    many = await provider.embed(
        EmbeddingRequest(model="e", input=[f"text {i}" for i in range(150)]), ctx("text-embedding-004")
    )
    assert [d.index for d in many.data] == list(range(150))
    assert [len(r.json["requests"]) for r in fake.requests[-2:]] == [100, 50]  # Gemini takes 100 a batch


async def test_embeddings_refuse_what_gemini_cannot_embed(
    provider: GeminiProvider, fake: FakeGeminiUpstream
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider.embed(EmbeddingRequest(model="e", input=[[1, 2, 3]]), ctx("text-embedding-004"))
    assert caught.value.param == "input"
    assert fake.requests == []
    with pytest.raises(ProviderRejected) as caught:
        await provider.embed(EmbeddingRequest(model="e", input="x"), ctx("gemini-2.0-flash"))  # a chat model
    assert caught.value.status == 404


def _fn(name: str, args: dict[str, Any]) -> ToolFunction:
    return ToolFunction(name=name, arguments=json.dumps(args, separators=(",", ":")))
