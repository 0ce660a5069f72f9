"""Fixtures: a FakeAnthropicUpstream per test and providers aimed at it (real HTTP over loopback)."""

from __future__ import annotations

from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream
from sira_kernel.testing.providers import adapter_fixtures

from sira_provider_anthropic import AnthropicConfig, AnthropicProvider

API_KEY = "sk-ant-test-secret-0123456789"

anyio_backend, fake, open_provider, provider = adapter_fixtures(
    lambda: FakeAnthropicUpstream(api_key=API_KEY),
    lambda config: AnthropicProvider("anthropic", AnthropicConfig(**config)),
    api_key=API_KEY,
    defaults={"models": ["claude-sonnet-4-5"]},
)
