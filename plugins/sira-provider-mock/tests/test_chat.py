from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sira_kernel.providers import CallContext
from sira_kernel.types import ChatRequest, Message, TextDelta

from sira_provider_mock import MockProvider

pytestmark = pytest.mark.anyio

Ask = Callable[..., ChatRequest]


async def test_default_reply_echoes_the_last_user_message(provider: MockProvider, ctx: CallContext) -> None:
    request = ChatRequest(
        model="mock-1",
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content="first question"),
            Message(role="assistant", content="first answer"),
            Message(role="user", content="What is the capital of France?"),
        ],
    )
    response = await provider.chat(request, ctx)
    (choice,) = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "This is a mock reply to: What is the capital of France?"
    assert choice.finish_reason == "stop"
    assert response.model == "mock-1-upstream"
    assert response.object == "chat.completion"
    assert abs(response.created - time.time()) < 5


async def test_echo_is_cut_to_sixty_characters(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    text = "word " * 40
    response = await provider.chat(ask(text), ctx)
    echoed = response.choices[0].message.content.removeprefix("This is a mock reply to: ")
    assert echoed == " ".join(text.split())[:60]


async def test_ids_count_up(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    first = await provider.chat(ask("a"), ctx)
    second = await provider.chat(ask("b"), ctx)
    assert (first.id, second.id) == ("chatcmpl-mock-1", "chatcmpl-mock-2")


async def test_fixed_reply(make_provider: Callable[..., MockProvider], ctx: CallContext, ask: Ask) -> None:
    response = await make_provider(reply="Always this.").chat(ask("anything"), ctx)
    assert response.choices[0].message.content == "Always this."


async def test_no_user_message(provider: MockProvider, ctx: CallContext) -> None:
    request = ChatRequest(model="m", messages=[Message(role="system", content="hello")])
    response = await provider.chat(request, ctx)
    assert response.choices[0].message.content == "This is a mock reply."


async def test_text_parts_are_read_and_counted(provider: MockProvider, ctx: CallContext) -> None:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "this picture"},
    ]
    request = ChatRequest(model="m", messages=[Message(role="user", content=content)])
    response = await provider.chat(request, ctx)
    assert response.choices[0].message.content == "This is a mock reply to: describe this picture"
    assert response.usage is not None and response.usage.prompt_tokens == 3


async def test_usage_sums(provider: MockProvider, ctx: CallContext) -> None:
    request = ChatRequest(
        model="m",
        messages=[
            Message(role="system", content="You are  terse."),
            Message(role="user", content="one two three"),
        ],
        n=3,
    )
    response = await provider.chat(request, ctx)
    usage = response.usage
    assert usage is not None
    reply_tokens = len(response.choices[0].message.content.split())
    assert usage.prompt_tokens == 6
    assert usage.completion_tokens == 3 * reply_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_n_choices(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    response = await provider.chat(ask("hello", n=3), ctx)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert len({c.message.content for c in response.choices}) == 1


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_token_limit_truncates_with_length(
    provider: MockProvider, ctx: CallContext, ask: Ask, field: str
) -> None:
    response = await provider.chat(ask("tell me a long story", **{field: 3}), ctx)
    choice = response.choices[0]
    assert choice.message.content == "This is a "
    assert choice.finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 3


async def test_limit_above_reply_length_finishes_with_stop(
    provider: MockProvider, ctx: CallContext, ask: Ask
) -> None:
    response = await provider.chat(ask("hi", max_tokens=100), ctx)
    assert response.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stop", ["mock", ["zzz", "reply", "is"]])
async def test_stop_cuts_before_the_first_stop_string(
    provider: MockProvider, ctx: CallContext, ask: Ask, stop: str | list[str]
) -> None:
    response = await provider.chat(ask("hello", stop=stop), ctx)
    choice = response.choices[0]
    expected = "This is a " if stop == "mock" else "Th"  # "is" first occurs inside "This"
    assert choice.message.content == expected
    assert choice.finish_reason == "stop"


async def test_json_object_mode(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    response = await provider.chat(ask("give me json", response_format={"type": "json_object"}), ctx)
    assert json.loads(response.choices[0].message.content) == {
        "reply": "This is a mock reply to: give me json"
    }


async def test_json_schema_mode(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array"}},
        "required": ["name", "age", "tags"],
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    response = await provider.chat(ask("a person", response_format=response_format), ctx)
    assert json.loads(response.choices[0].message.content) == {"name": "mock", "age": 1, "tags": ["mock"]}


async def test_tokens_directive_gives_exactly_n_tokens(
    provider: MockProvider, ctx: CallContext, ask: Ask
) -> None:
    response = await provider.chat(ask("hi [mock:tokens=25]"), ctx)
    content = response.choices[0].message.content
    assert len(content.split(" ")) == 25
    assert "[mock:" not in content
    assert response.usage is not None and response.usage.completion_tokens == 25
    empty = await provider.chat(ask("[mock:tokens=0]"), ctx)
    assert empty.choices[0].message.content == ""


async def test_chat_with_pace_takes_as_long_as_the_stream(
    make_provider: Callable[..., MockProvider], ctx: CallContext, ask: Ask
) -> None:
    provider = make_provider(pace_ms=10, first_token_ms=20)
    started = anyio.current_time()
    await provider.chat(ask("[mock:tokens=6]"), ctx)
    assert anyio.current_time() - started >= 0.02 + 5 * 0.01 - 0.005


async def test_chat_without_pace_is_cheap(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    request = ask("What is the capital of France? Answer in one word please.")
    started = time.perf_counter()
    for _ in range(2000):
        await provider.chat(request, ctx)
    per_call = (time.perf_counter() - started) / 2000
    assert per_call < 200e-6  # microseconds in practice; generous for slow CI machines


_words = st.text(alphabet="abc xyz.,", min_size=0, max_size=80)


@settings(max_examples=60, deadline=None)
@given(
    text=_words,
    n=st.integers(1, 3),
    limit=st.none() | st.integers(0, 20),
    stop=st.none() | st.sampled_from(["a", "x y", "reply", "mock reply", "."]),
)
def test_stream_and_chat_agree(text: str, n: int, limit: int | None, stop: str | None) -> None:
    provider = MockProvider(name="mock")
    ctx = CallContext(upstream_model="m", request_id="r")
    request = ChatRequest(
        model="m", messages=[Message(role="user", content=text)], n=n, max_tokens=limit, stop=stop
    )

    async def both() -> tuple[Any, list[Any]]:
        return await provider.chat(request, ctx), [e async for e in provider.stream(request, ctx)]

    response, events = anyio.run(both)
    for choice in response.choices:
        deltas = [e.text for e in events if isinstance(e, TextDelta) and e.index == choice.index]
        assert "".join(deltas) == choice.message.content
        assert response.usage is not None
        assert len(deltas) * n == response.usage.completion_tokens
        if limit is not None:
            assert len(deltas) <= limit
        if stop is not None:
            assert stop not in choice.message.content
    assert events[-1] == response.usage
