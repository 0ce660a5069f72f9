"""The plugin contract, its routes and ``count_tokens``, on an in-process kernel (no network)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sira_kernel import ChatRequest, KernelApp, ProviderUnavailable, RateLimited, hookimpl
from sira_kernel.accounting import TokenCounter
from sira_kernel.registrations import ServiceRegistrar
from sira_kernel.testing import FakeProviderPlugin, make_kernel

import sira_api_anthropic
from sira_api_anthropic import AnthropicSurfaceConfig, AnthropicSurfacePlugin, estimate_input_tokens
from sira_api_anthropic._request import decode_messages

MASTER = "sk-unit-master-0123456789"
HELLO = {"model": "fake-1", "max_tokens": 50, "messages": [{"role": "user", "content": "Hello there"}]}


def test_public_api_is_pinned() -> None:
    assert sira_api_anthropic.__all__ == ["AnthropicSurfaceConfig", "AnthropicSurfacePlugin", "estimate_input_tokens"]


def test_plugin_class_contract_and_entry_point() -> None:
    assert AnthropicSurfacePlugin.sira_api == 1 and AnthropicSurfacePlugin.Config is AnthropicSurfaceConfig
    (found,) = [ep for ep in entry_points(group="sira_kernel.plugins") if ep.name == "api-anthropic"]
    assert found.load() is AnthropicSurfacePlugin
    assert AnthropicSurfaceConfig().prefixes == ["/v1"]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"prefix": "/v1"}, AnthropicSurfaceConfig)


def test_readme_documents_every_config_key() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for field in msgspec.structs.fields(AnthropicSurfaceConfig):
        assert f"| `{field.name}` |" in readme, field.name


class CounterPlugin:
    """Registers a TokenCounter that answers ``answer`` (or raises it when it is an exception)."""

    sira_api = 1
    provides = ("TokenCounter",)
    answer: Any = 1234

    def __init__(self) -> None:
        self.seen: list[ChatRequest] = []

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        register(TokenCounter, self)

    def count_text(self, model: str, text: str) -> int:
        return len(text.split())

    def count_chat(self, request: ChatRequest) -> int:
        self.seen.append(request)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer  # type: ignore[no-any-return]

    def is_exact(self, model: str) -> bool:
        return True


async def _client(**plugins: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    config = {
        "server": {"master_key": MASTER},
        "plugins": {"api-anthropic": {"prefixes": ["/anthropic/v1/"]}, "fake": {"models": ["fake-1", "p/fake-2"]}},
    }
    async with make_kernel({"api-anthropic": AnthropicSurfacePlugin, "fake": FakeProviderPlugin, **plugins},
                           config) as kernel:
        app = KernelApp(lambda: kernel)
        app.kernel = kernel
        headers = {"x-api-key": MASTER}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira",
                                     headers=headers) as http:
            yield http, kernel


@pytest.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async for pair in _client():
        yield pair


@pytest.fixture
async def with_counter() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async for pair in _client(counter=CounterPlugin):
        yield pair


@pytest.mark.anyio
async def test_routes_follow_the_configured_prefix(served: tuple[httpx.AsyncClient, Any]) -> None:
    http, _ = served
    response = await http.post("/anthropic/v1/messages", json=HELLO)
    assert response.status_code == 200
    assert response.json()["content"] == [{"type": "text", "text": "Hello from the fake provider"}]
    assert response.headers["request-id"]
    assert (await http.post("/v1/messages", json=HELLO)).status_code == 404
    streamed = await http.post("/anthropic/v1/messages", json={**HELLO, "stream": True})
    assert streamed.text.startswith("event: message_start\n") and streamed.text.endswith(
        'event: message_stop\ndata: {"type":"message_stop"}\n\n')


@pytest.mark.anyio
async def test_count_tokens_estimates_without_a_counter(served: tuple[httpx.AsyncClient, Any]) -> None:
    http, _ = served
    response = await http.post("/anthropic/v1/messages/count_tokens", json={**HELLO, "max_tokens": None})
    expected = estimate_input_tokens(decode_messages(msgspec.json.encode(HELLO), count_only=True))
    assert response.status_code == 200 and response.json() == {"input_tokens": expected}
    unknown = await http.post("/anthropic/v1/messages/count_tokens", json={**HELLO, "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    anonymous = await http.post("/anthropic/v1/messages/count_tokens", json=HELLO, headers={"x-api-key": "wrong"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"


@pytest.mark.anyio
async def test_count_tokens_uses_a_registered_token_counter(with_counter: tuple[httpx.AsyncClient, Any]) -> None:
    http, kernel = with_counter
    counter = kernel.services.get(TokenCounter)
    response = await http.post("/anthropic/v1/messages/count_tokens", json={**HELLO, "model": "fake/fake-1"})
    assert response.json() == {"input_tokens": 1234}
    [request] = counter.seen
    assert request.messages[0].content == "Hello there"
    assert request.model == "fake-1"  # the routed upstream model picks the tokenizer, not the public name

    counter.answer = RateLimited("tokenizer busy", retry_after=2)
    limited = await http.post("/anthropic/v1/messages/count_tokens", json=HELLO)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert limited.json()["error"] == {"type": "rate_limit_error", "message": "tokenizer busy"}

    counter.answer = ValueError("tokenizer bug")  # logged; the estimate answers instead
    fallback = await http.post("/anthropic/v1/messages/count_tokens", json=HELLO)
    assert fallback.status_code == 200 and fallback.json()["input_tokens"] != 1234


@pytest.mark.anyio
async def test_provider_errors_in_anthropic_shape(served: tuple[httpx.AsyncClient, Any]) -> None:
    http, kernel = served
    provider = kernel.snapshot.providers["fake"][0]
    provider.fail = ProviderUnavailable("the gateway is draining", status=503)
    overloaded = await http.post("/anthropic/v1/messages", json=HELLO)
    assert overloaded.status_code == 529
    assert overloaded.json()["error"] == {"type": "overloaded_error", "message": "the gateway is draining"}
    provider.fail = RuntimeError("a provider bug")
    crashed = await http.post("/anthropic/v1/messages", json=HELLO)
    assert crashed.status_code == 500
    assert crashed.json()["error"] == {"type": "api_error", "message": "internal error"}
    provider.fail = None
    assert (await http.post("/anthropic/v1/messages", json=HELLO)).status_code == 200
