"""Fixtures: a FakeOpenAIUpstream per test and providers aimed at it (real HTTP over loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from sira_kernel.config import Secret
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream

from sira_provider_openai import OpenAIConfig, OpenAIProvider

API_KEY = "sk-test-secret-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # httpx-aiohttp runs on asyncio only


@pytest.fixture
def fake() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream(api_key=API_KEY) as server:
        yield server


OpenProvider = Callable[..., AbstractAsyncContextManager[OpenAIProvider]]


@pytest.fixture
def open_provider(fake: FakeOpenAIUpstream) -> OpenProvider:
    """``async with open_provider(**config) as provider``: a started provider aimed at the fake."""

    @asynccontextmanager
    async def open_(**config: Any) -> AsyncIterator[OpenAIProvider]:
        config.setdefault("base_url", fake.base_url)
        config.setdefault("api_key", Secret(API_KEY))
        async with OpenAIProvider("openai", OpenAIConfig(**config)) as provider:
            yield provider

    return open_


@pytest.fixture
async def provider(open_provider: OpenProvider) -> AsyncIterator[OpenAIProvider]:
    async with open_provider(models=["gpt-4o-mini"]) as started:
        yield started
