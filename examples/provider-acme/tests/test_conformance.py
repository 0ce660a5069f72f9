"""The conformance kit on the Acme adapter: the suite every provider adapter must pass, the shared
upstream-failure suite and the plugin contract."""

from __future__ import annotations

from typing import Any

import pytest
from sira_provider_acme import AcmeConfig, AcmeProviderPlugin

from sira_kernel import Capabilities, ProviderUnavailable, Secret, StreamError, StreamStart
from sira_kernel.testing.conformance import AdapterUnderTest, ConformanceSuite
from sira_kernel.testing.loopback import Fault, RecordedRequest
from sira_kernel.testing.providers import (
    LONG_TEXT,
    ProviderPluginContract,
    UpstreamFailureSuite,
    call_context,
    chat_request,
    collect,
)

from .conftest import API_KEY
from .fake_acme import AcmeFault, FakeAcmeUpstream

ACME = AdapterUnderTest(
    name="provider-acme",
    plugin=AcmeProviderPlugin,
    upstream=lambda: FakeAcmeUpstream(api_key=API_KEY),
    config=lambda fake: {"base_url": fake.base_url, "api_key": API_KEY, "models": ["acme-1"]},
    chat_model="acme-1",
    capabilities=Capabilities(vision=True, passthrough_fields=False),
    stream_error=AcmeFault(error_after=3),
)


class TestConformance(ConformanceSuite):  # through a real kernel: the matrix row of provider-acme
    adapter = ACME


class TestUpstreamFailures(UpstreamFailureSuite):  # deadlines, broken connections, limits, releasing
    model = "acme-1"

    async def test_response_too_large(self, provider: Any, fake: FakeAcmeUpstream) -> None:
        # The inherited test crosses 2000 bytes in a LONG_TEXT stream; Acme's lines are terser than
        # OpenAI's chunks (about 800 bytes in all), so the limit here is 300.
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.chat(chat_request(LONG_TEXT), call_context(self.model, max_response_bytes=200))
        assert "larger than 200 bytes" in caught.value.message
        fake.enqueue(Fault(chunk_delay=0.01))  # so that the limit is crossed after the stream started
        stream = provider.stream(chat_request(LONG_TEXT), call_context(self.model, max_response_bytes=300))
        events = await collect(stream)
        assert isinstance(events[0], StreamStart)
        assert isinstance(events[-1], StreamError) and "larger than 300 bytes" in events[-1].message


class TestPluginContract(ProviderPluginContract):  # entry point, hooks, lifespan, several instances
    plugin_class = AcmeProviderPlugin
    entry_point = "provider-acme"
    model = "acme-1"

    def plugin_config(self, fake: Any, **keys: Any) -> AcmeConfig:
        return AcmeConfig(base_url=fake.base_url, api_key=Secret(API_KEY), **keys)

    def sent_model(self, request: RecordedRequest) -> str:
        return str(request.json["engine"])
