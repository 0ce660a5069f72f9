"""Non-streamed chat and embeddings against the fake upstream, over real HTTP."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from sira_kernel.config import Secret
from sira_kernel.errors import ProviderRejected
from sira_kernel.providers import CallContext
from sira_kernel.routing import Deployment, RouteTable
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream
from sira_kernel.testing.providers import TOOLS, call_context
from sira_kernel.testing.providers import chat_request as ask
from sira_kernel.types import ChatRequest, EmbeddingRequest, Message, ModelInfo

from sira_provider_openai import OpenAIProvider

pytestmark = pytest.mark.anyio


def ctx(model: str = "gpt-4o-mini") -> CallContext:
    return call_context(model)


async def test_text_reply_usage_and_upstream_model(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    response = await provider.chat(ask("hello there"), ctx("gpt-4o-mini"))

    assert response.choices[0].message.content == "Echo: hello there"
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "gpt-4o-mini"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (2, 3)
    assert response.usage.total_tokens == 5
    sent = fake.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.json["model"] == "gpt-4o-mini"  # ctx.upstream_model, not the public request.model
    assert "stream" not in sent.json and "stream_options" not in sent.json


async def test_headers_are_config_only(open_provider: Any, fake: FakeOpenAIUpstream) -> None:
    async with open_provider(organization="org-1", project="proj-1", headers={"X-Team": "blue"}) as provider:
        await provider.chat(ask(), ctx())
    headers = fake.requests[-1].headers
    assert headers["authorization"] == f"Bearer {fake.api_key}"
    assert headers["openai-organization"] == "org-1"
    assert headers["openai-project"] == "proj-1"
    assert headers["x-team"] == "blue"
    assert headers["content-type"] == "application/json"


async def test_n_choices(provider: OpenAIProvider) -> None:
    response = await provider.chat(ask("one two", n=3), ctx())
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert {c.message.content for c in response.choices} == {"Echo: one two"}
    assert response.usage is not None and response.usage.completion_tokens == 9


async def test_max_tokens_cuts_the_reply(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    response = await provider.chat(ask("a b c d", max_completion_tokens=2), ctx())
    assert response.choices[0].message.content == "Echo: a"
    assert response.choices[0].finish_reason == "length"
    assert fake.requests[-1].json["max_completion_tokens"] == 2


async def test_tool_call(provider: OpenAIProvider) -> None:
    response = await provider.chat(ask("weather?", tools=TOOLS[:1]), ctx())
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}


async def test_parallel_tool_calls(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    response = await provider.chat(ask("weather and time?", tools=TOOLS), ctx())
    calls = response.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"location": "Paris"}, {"location": "Tokyo"}]
    assert fake.requests[-1].json["tools"] == TOOLS

    single = await provider.chat(ask("weather?", tools=TOOLS, parallel_tool_calls=False), ctx())
    assert single.choices[0].message.tool_calls is not None
    assert len(single.choices[0].message.tool_calls) == 1
    assert fake.requests[-1].json["parallel_tool_calls"] is False


async def test_extra_fields_pass_through_but_never_override_modelled_ones(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    request = ask(
        "hi",
        temperature=0.5,
        extra={"reasoning_effort": "low", "metadata": {"k": "v"}, "model": "gpt-expensive", "stream": True},
    )
    await provider.chat(request, ctx("gpt-4o-mini"))
    body = fake.requests[-1].json
    assert body["reasoning_effort"] == "low"
    assert body["metadata"] == {"k": "v"}
    assert body["temperature"] == 0.5
    assert body["model"] == "gpt-4o-mini"
    assert "stream" not in body
    assert b'"model":"gpt-expensive"' not in fake.requests[-1].body
    assert "extra" not in body


async def test_passthrough_can_be_switched_off(open_provider: Any, fake: FakeOpenAIUpstream) -> None:
    async with open_provider(passthrough_fields=False) as provider:
        assert provider.capabilities.passthrough_fields is False
        await provider.chat(ask(extra={"reasoning_effort": "low"}), ctx())
    assert "reasoning_effort" not in fake.requests[-1].json


async def test_reasoning_of_earlier_turns_is_not_sent(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    messages = [
        Message(role="user", content="first"),
        Message(
            role="assistant",
            content="answer",
            reasoning_content="private thoughts",
            reasoning_signature="sig",
        ),
        Message(role="user", content="second"),
    ]
    await provider.chat(ChatRequest(model="m", messages=messages), ctx())
    sent = fake.requests[-1].json["messages"]
    assert [m.get("reasoning_content") for m in sent] == [None, None, None]
    assert not any("reasoning_signature" in m for m in sent)
    assert sent[1]["content"] == "answer"
    assert messages[1].reasoning_signature == "sig"  # the caller's request is untouched


async def test_anthropic_cache_control_marks_are_not_sent(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    mark = {"type": "ephemeral"}
    system = [{"type": "text", "text": "be brief", "cache_control": mark}]
    tools = [{**TOOLS[0], "cache_control": mark}, TOOLS[1]]
    request = ChatRequest(
        model="m",
        messages=[Message(role="system", content=system), Message(role="user", content="hi")],
        tools=tools,
        tool_choice="none",
    )
    await provider.chat(request, ctx())
    sent = fake.requests[-1].json
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "be brief"}]
    assert sent["tools"] == TOOLS
    assert b"cache_control" not in fake.requests[-1].body
    assert system[0]["cache_control"] == mark and tools[0]["cache_control"] == mark  # untouched


async def test_content_parts_survive(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
    ]
    response = await provider.chat(
        ChatRequest(model="m", messages=[Message(role="user", content=parts)]), ctx()
    )
    assert fake.requests[-1].json["messages"][0]["content"] == parts
    assert response.choices[0].message.content == "Echo: what is this"


async def test_alias_maps_to_upstream_model(open_provider: Any, fake: FakeOpenAIUpstream) -> None:
    async with open_provider(
        models=["gpt-4o-mini"],
        aliases={"fast": "gpt-4o-mini", "embed": "text-embedding-3-small"},
        embedding_models=["text-embedding-3-small"],
    ) as provider:
        assert provider.models() == [
            ModelInfo(id="gpt-4o-mini", upstream="gpt-4o-mini"),
            ModelInfo(id="text-embedding-3-small", upstream="text-embedding-3-small", kind="embedding"),
            ModelInfo(id="fast", upstream="gpt-4o-mini"),
            ModelInfo(id="embed", upstream="text-embedding-3-small", kind="embedding"),
        ]
        # The kernel's route table turns the public alias into the model sent upstream.
        [deployment] = RouteTable({"openai": provider}).lookup("fast")
        assert deployment == Deployment("openai", "gpt-4o-mini")
        response = await provider.chat(ask(model="fast"), ctx(deployment.model))
    assert fake.requests[-1].json["model"] == "gpt-4o-mini"
    assert response.model == "gpt-4o-mini"


async def test_discover_models(open_provider: Any, fake: FakeOpenAIUpstream) -> None:
    async with open_provider(models=["local-model"]) as provider:
        found = await provider.discover(timeout=5)
        assert found == list(fake.models)
        ids = {m.id: m.kind for m in provider.models()}
    assert ids == {
        "local-model": "chat",
        "gpt-4o-mini": "chat",
        "gpt-4o": "chat",
        "text-embedding-3-small": "embedding",
    }
    assert (fake.requests[-1].method, fake.requests[-1].path) == ("GET", "/v1/models")


async def test_azure_url_scheme_and_api_key_header(open_provider: Any, fake: FakeOpenAIUpstream) -> None:
    async with open_provider(base_url=fake.root_url, azure=True, api_version="2024-10-21") as provider:
        response = await provider.chat(ask("hi"), ctx("my-gpt4o.deploy_1"))
        embeddings = await provider.embed(EmbeddingRequest(model="e", input="x"), ctx("my-embed"))
    chat_request, embed_request = fake.requests[-2:]
    assert chat_request.path == "/openai/deployments/my-gpt4o.deploy_1/chat/completions"
    assert chat_request.query == {"api-version": "2024-10-21"}
    assert chat_request.headers["api-key"] == fake.api_key
    assert "authorization" not in chat_request.headers
    assert response.choices[0].message.content == "Echo: hi"
    assert embed_request.path == "/openai/deployments/my-embed/embeddings"
    assert len(embeddings.data) == 1


@pytest.mark.parametrize("deployment", ["..", "../../v1/evil", "a/b", "dep?x=1", "dep#frag", "", "x" * 200])
async def test_azure_deployment_cannot_change_the_url(
    open_provider: Any, fake: FakeOpenAIUpstream, deployment: str
) -> None:
    async with open_provider(base_url=fake.root_url, azure=True) as provider:
        with pytest.raises(ProviderRejected) as caught:
            await provider.chat(ask(), ctx(deployment))
    assert caught.value.status == 400
    assert fake.requests == []


async def test_embeddings(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    request = EmbeddingRequest(
        model="public", input=["hello world", "bye"], dimensions=4, extra={"foo": "bar"}
    )
    response = await provider.embed(request, ctx("text-embedding-3-small"))
    assert [d.index for d in response.data] == [0, 1]
    assert all(isinstance(d.embedding, list) and len(d.embedding) == 4 for d in response.data)
    assert response.model == "text-embedding-3-small"
    assert response.usage is not None and response.usage.prompt_tokens == 3
    sent = fake.requests[-1]
    assert sent.path == "/v1/embeddings"
    assert sent.json == {
        "model": "text-embedding-3-small",
        "input": ["hello world", "bye"],
        "dimensions": 4,
        "foo": "bar",
    }


async def test_embeddings_base64(provider: OpenAIProvider) -> None:
    request = EmbeddingRequest(model="e", input="hello", encoding_format="base64")
    response = await provider.embed(request, ctx("text-embedding-3-small"))
    [item] = response.data
    assert isinstance(item.embedding, str)
    assert len(struct.unpack("<8f", base64.b64decode(item.embedding))) == 8


async def test_no_api_key_sends_no_credentials(fake: FakeOpenAIUpstream) -> None:
    fake.api_key = None
    from sira_provider_openai import OpenAIConfig

    async with OpenAIProvider("local", OpenAIConfig(base_url=fake.base_url)) as provider:
        await provider.chat(ask(), ctx())
    assert "authorization" not in fake.requests[-1].headers


def test_secret_never_in_repr() -> None:
    from sira_provider_openai import OpenAIConfig

    config = OpenAIConfig(api_key=Secret("sk-live-abcdefghijklmnop"))
    provider = OpenAIProvider("x", config)
    assert "sk-live" not in repr(config)
    assert "sk-live" not in repr(provider.__dict__.get("config"))
