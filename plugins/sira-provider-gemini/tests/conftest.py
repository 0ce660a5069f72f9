"""Fixtures: a FakeGeminiUpstream per test and providers aimed at it (real HTTP over loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from sira_kernel.config import Secret
from sira_kernel.testing.fake_gemini import FakeGeminiUpstream

from sira_provider_gemini import GeminiConfig, GeminiProvider

API_KEY = "AIza-test-secret-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # httpx-aiohttp runs on asyncio only


@pytest.fixture
def fake() -> Iterator[FakeGeminiUpstream]:
    with FakeGeminiUpstream(api_key=API_KEY) as server:
        yield server


OpenProvider = Callable[..., AbstractAsyncContextManager[GeminiProvider]]


@pytest.fixture
def open_provider(fake: FakeGeminiUpstream) -> OpenProvider:
    """``async with open_provider(**config) as provider``: a started provider aimed at the fake."""

    @asynccontextmanager
    async def open_(**config: Any) -> AsyncIterator[GeminiProvider]:
        config.setdefault("base_url", fake.base_url)
        config.setdefault("api_key", Secret(API_KEY))
        async with GeminiProvider("gemini", GeminiConfig(**config)) as provider:
            yield provider

    return open_


@pytest.fixture
async def provider(open_provider: OpenProvider) -> AsyncIterator[GeminiProvider]:
    async with open_provider(models=["gemini-2.0-flash"], embedding_models=["text-embedding-004"]) as started:
        yield started
