"""Fixtures: a FakeOpenAIUpstream per test and providers aimed at it (real HTTP over loopback)."""

from __future__ import annotations

from sira_kernel.testing.fake_openai import FakeOpenAIUpstream
from sira_kernel.testing.providers import adapter_fixtures

from sira_provider_openai import OpenAIConfig, OpenAIProvider

API_KEY = "sk-test-secret-0123456789"

anyio_backend, fake, open_provider, provider = adapter_fixtures(
    lambda: FakeOpenAIUpstream(api_key=API_KEY),
    lambda config: OpenAIProvider("openai", OpenAIConfig(**config)),
    api_key=API_KEY,
    defaults={"models": ["gpt-4o-mini"]},
)
