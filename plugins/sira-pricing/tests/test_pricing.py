from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sira_pricing import Price, PriceList, PricingConfig, PricingPlugin, build_prices

from sira_kernel import ChatRequest, ConfigError, Message, RequestInfo, UsageRecord
from sira_kernel.bus import Subscription
from sira_kernel.testing import FakeProviderPlugin, make_kernel


def record(**fields: object) -> UsageRecord:
    base = dict(request_id="r", timestamp=0.0, operation="chat", principal="p", principal_kind="key")
    return UsageRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_cost_uses_input_cached_and_output_rates() -> None:
    book = PriceList({"m": Price(input=2.0, cached_input=0.5, output=8.0)})
    usd = book.cost(record(model="m", prompt_tokens=1_000_000, cached_tokens=400_000, completion_tokens=500_000))
    assert usd == pytest.approx(600_000 * 2.0 / 1e6 + 400_000 * 0.5 / 1e6 + 500_000 * 8.0 / 1e6)
    assert book.cost(record(model="unknown", prompt_tokens=10)) is None


def test_lookup_order_alias_then_provider_model_then_upstream() -> None:
    book = PriceList({"openai/gpt-4o": Price(input=1.0), "gpt-4o": Price(input=2.0), "smart": Price(input=3.0)})
    r = record(model="smart", provider="openai", upstream_model="gpt-4o", prompt_tokens=1_000_000)
    assert book.cost(r) == 3.0
    r.model = "other-alias"
    assert book.cost(r) == 1.0
    r.provider = "azure"
    assert book.cost(r) == 2.0


def test_bundled_file_and_overrides(tmp_path: Path) -> None:
    bundled = build_prices(PricingConfig())
    assert bundled["gpt-4o-mini"].output > bundled["gpt-4o-mini"].input > 0
    mine = tmp_path / "prices.toml"
    mine.write_text('[models."house"]\ninput = 1.5\n[models."gpt-4o"]\ninput = 9.0\n')
    prices = build_prices(PricingConfig(file=str(mine), prices={"gpt-4o": Price(input=7.0)}))
    assert prices["house"].input == 1.5 and prices["gpt-4o"].input == 7.0
    assert "gpt-4o-mini" not in build_prices(PricingConfig(bundled=False))
    mine.write_text('[models."x"]\ninput = -1\n')
    with pytest.raises(ConfigError):
        build_prices(PricingConfig(file=str(mine)))


@pytest.mark.anyio
async def test_usage_records_carry_cost() -> None:
    config = {"plugins": {"pricing": {"bundled": False, "prices": {"fake-1": {"input": 1.0, "output": 2.0}}}}}
    async with make_kernel({"pricing": PricingPlugin, "fake": FakeProviderPlugin}, config) as kernel:
        records: list[UsageRecord] = []
        sub = Subscription("t", "usage.request", records.append)
        kernel.bus.add(sub)
        kernel.task_group.start_soon(sub.run)
        info = RequestInfo(method="POST", path="/", headers={})
        response = await kernel.pipeline.chat(ChatRequest(model="fake-1", messages=[Message("user", "a b")]), info)
        with anyio.fail_after(2):
            while not records:
                await anyio.sleep(0.001)
        usage = response.usage
        assert usage is not None
        assert records[0].cost_usd == pytest.approx((usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6)
