"""The mock inside a real kernel: found by its entry point, routed to, streamed through the pipeline."""

from __future__ import annotations

from typing import Any

import pytest
from sira_kernel.auth import RequestInfo
from sira_kernel.errors import ProviderRateLimited
from sira_kernel.kernel import Kernel
from sira_kernel.testing import make_kernel
from sira_kernel.types import ChatRequest, EmbeddingRequest, Finish, Message, StreamStart, TextDelta, Usage


def _kernel(plugins: dict[str, dict[str, Any]] | None = None, enable: list[str] | None = None) -> Kernel:
    """A kernel that loads the installed ``provider-mock`` distribution through its entry point."""
    plugins = plugins if plugins is not None else {"provider-mock": {}}
    return make_kernel(config={"kernel": {"plugins": enable or list(plugins)}, "plugins": plugins})


pytestmark = pytest.mark.anyio

INFO = RequestInfo(method="POST", path="/v1/chat/completions", headers={}, request_id="req-1")


def _ask(text: str, model: str = "mock-1") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)])


async def test_chat_stream_and_embeddings_through_the_pipeline() -> None:
    async with _kernel({"provider-mock": {"pace_ms": 1}}) as kernel:
        response = await kernel.pipeline.chat(_ask("Hello gateway"), INFO)
        assert response.choices[0].message.content == "This is a mock reply to: Hello gateway"
        assert response.model == "mock-1"

        stream = await kernel.pipeline.stream(_ask("Hello gateway"), INFO)
        try:
            events = [event async for event in stream]
        finally:
            await stream.aclose()
        assert isinstance(events[0], StreamStart)
        assert (
            "".join(e.text for e in events if isinstance(e, TextDelta)) == response.choices[0].message.content
        )
        assert isinstance(events[-2], Finish) and isinstance(events[-1], Usage)

        embedded = await kernel.pipeline.embed(EmbeddingRequest(model="mock-embed", input="hi"), INFO)
        assert len(embedded.data[0].embedding) == 8


async def test_directive_errors_reach_the_caller() -> None:
    async with _kernel() as kernel:
        with pytest.raises(ProviderRateLimited) as caught:
            await kernel.pipeline.stream(_ask("[mock:status=429][mock:retry_after=3]"), INFO)
        assert caught.value.status == 429 and caught.value.retry_after == 3
        assert caught.value.provider == "provider-mock"


async def test_several_instances_with_use() -> None:
    plugins = {
        "mock-a": {"use": "provider-mock", "models": ["model-a"], "reply": "from a"},
        "mock-b": {"use": "provider-mock", "models": ["model-b"], "reply": "from b"},
    }
    async with _kernel(plugins) as kernel:
        a = await kernel.pipeline.chat(_ask("x", "model-a"), INFO)
        b = await kernel.pipeline.chat(_ask("x", "model-b"), INFO)
        assert (a.choices[0].message.content, b.choices[0].message.content) == ("from a", "from b")
