from __future__ import annotations

import pytest
from sira_tokenizer import TiktokenCounter, TokenizerConfig, TokenizerPlugin, seed_tiktoken_cache

from sira_kernel import ChatRequest, Message
from sira_kernel.accounting import TokenCounter
from sira_kernel.testing import make_kernel


@pytest.fixture(autouse=True)
def offline_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken must find its vocabularies without the network: in the cache the plugin seeds."""
    cache = tmp_path_factory.getbasetemp() / "tiktoken"
    seed_tiktoken_cache(cache)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))


def counter(**config: object) -> TiktokenCounter:
    return TiktokenCounter(TokenizerConfig(**config))  # type: ignore[arg-type]


def test_openai_models_are_exact_with_tiktoken_ids() -> None:
    c = counter()
    # Token ids as tiktoken produces them (OpenAI cookbook examples).
    assert c._lookup("gpt-4o")[0].encode("hello world") == [24912, 2375]
    assert c._lookup("gpt-4-turbo")[0].encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert c.count_text("gpt-4o-mini", "hello world") == 2
    assert c.count_text("gpt-4", "tiktoken is great!") == 6
    assert c.is_exact("gpt-4o") and c.is_exact("openai/gpt-4o") and c.is_exact("o3-mini")
    assert not c.is_exact("claude-sonnet-4")


def test_chat_formula() -> None:
    c = counter()
    request = ChatRequest(model="gpt-4o", messages=[Message("system", "Be brief."), Message("user", "hello world")])
    role = c.count_text("gpt-4o", "system") + c.count_text("gpt-4o", "user")
    text = c.count_text("gpt-4o", "Be brief.") + c.count_text("gpt-4o", "hello world")
    assert c.count_chat(request) == 3 + 2 * 3 + role + text


def test_model_encodings_override_and_estimates() -> None:
    c = counter(model_encodings={"house-model": "cl100k_base"})
    assert c.is_exact("house-model")
    assert c.count_text("house-model", "tiktoken is great!") == 6
    assert c.count_text("claude-sonnet-4", "hello world") > 0


@pytest.mark.anyio
async def test_registers_a_token_counter_service() -> None:
    async with make_kernel({"tok": TokenizerPlugin}) as kernel:
        service = kernel.services.get(TokenCounter)
        assert service.count_text("gpt-4o", "hello world") == 2
