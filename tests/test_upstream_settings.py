"""Every HTTP adapter's config shares sira_kernel.upstream.UpstreamSettings: the same keys, the same
validation, the same defaults, whichever adapter an operator configures."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from sira_provider_acme import AcmeConfig
from sira_provider_anthropic import AnthropicConfig
from sira_provider_gemini import GeminiConfig
from sira_provider_openai import OpenAIConfig

from sira_kernel.upstream import UpstreamSettings

CONFIGS = [OpenAIConfig, AnthropicConfig, GeminiConfig, AcmeConfig]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_each_adapter_config_is_upstream_settings(config: type[UpstreamSettings]) -> None:
    assert issubclass(config, UpstreamSettings)
    parsed = msgspec.convert({"headers": {"x-team": "a"}, "connect_timeout": 2.5, "proxy": "http://p:3128"}, config)
    assert (parsed.headers, parsed.connect_timeout, parsed.proxy) == ({"x-team": "a"}, 2.5, "http://p:3128")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "bad", [{"max_connections": 0}, {"keepalive_expiry": 0}, {"total_timeout": -1}, {"first_token_timeout": 0}]
)
def test_pool_and_timeout_bounds_are_checked_for_every_adapter(config: type[UpstreamSettings],
                                                                bad: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError, match=next(iter(bad))):
        msgspec.convert(bad, config)
