from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sira_kernel.providers import CallContext
from sira_kernel.types import ChatRequest, Message

from sira_provider_mock import MockConfig, MockProvider


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ctx() -> CallContext:
    return CallContext(upstream_model="mock-1-upstream", request_id="req-test")


@pytest.fixture
def provider() -> MockProvider:
    return MockProvider(name="mock", config=MockConfig())


@pytest.fixture
def make_provider() -> Callable[..., MockProvider]:
    def make(**config: Any) -> MockProvider:
        return MockProvider(name="mock", config=MockConfig(**config))

    return make


@pytest.fixture
def ask() -> Callable[..., ChatRequest]:
    """``ask(text, **fields)``: a one-message chat request."""

    def build(text: str, **fields: Any) -> ChatRequest:
        return ChatRequest(model="mock-1", messages=[Message(role="user", content=text)], **fields)

    return build


@pytest.fixture
def collect(ctx: CallContext) -> Callable[..., Any]:
    """``await collect(provider, request)``: every event of a stream, in order."""

    async def run(
        provider: MockProvider, request: ChatRequest, context: CallContext | None = None
    ) -> list[Any]:
        return [event async for event in provider.stream(request, context or ctx)]

    return run
