"""Fixtures: a FakeAnthropicUpstream per test and providers aimed at it (real HTTP over loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from sira_kernel.config import Secret
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream

from sira_provider_anthropic import AnthropicConfig, AnthropicProvider

API_KEY = "sk-ant-test-secret-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # httpx-aiohttp runs on asyncio only


@pytest.fixture
def fake() -> Iterator[FakeAnthropicUpstream]:
    with FakeAnthropicUpstream(api_key=API_KEY) as server:
        yield server


OpenProvider = Callable[..., AbstractAsyncContextManager[AnthropicProvider]]


@pytest.fixture
def open_provider(fake: FakeAnthropicUpstream) -> OpenProvider:
    """``async with open_provider(**config) as provider``: a started provider aimed at the fake."""

    @asynccontextmanager
    async def open_(**config: Any) -> AsyncIterator[AnthropicProvider]:
        config.setdefault("base_url", fake.base_url)
        config.setdefault("api_key", Secret(API_KEY))
        async with AnthropicProvider("anthropic", AnthropicConfig(**config)) as provider:
            yield provider

    return open_


@pytest.fixture
async def provider(open_provider: OpenProvider) -> AsyncIterator[AnthropicProvider]:
    async with open_provider(models=["claude-sonnet-4-5"]) as started:
        yield started
