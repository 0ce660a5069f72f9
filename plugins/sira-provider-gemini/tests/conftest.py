"""Fixtures: a FakeGeminiUpstream per test and providers aimed at it (real HTTP over loopback)."""

from __future__ import annotations

from sira_kernel.testing.fake_gemini import FakeGeminiUpstream
from sira_kernel.testing.providers import adapter_fixtures

from sira_provider_gemini import GeminiConfig, GeminiProvider

API_KEY = "AIza-test-secret-0123456789"

anyio_backend, fake, open_provider, provider = adapter_fixtures(
    lambda: FakeGeminiUpstream(api_key=API_KEY),
    lambda config: GeminiProvider("gemini", GeminiConfig(**config)),
    api_key=API_KEY,
    defaults={"models": ["gemini-2.0-flash"], "embedding_models": ["text-embedding-004"]},
)
