"""Pricing for Sira (plugin id ``pricing``): a ``PriceBook`` service, so every usage record carries
``cost_usd``.

Prices are USD per million tokens: ``input`` for prompt tokens, ``cached_input`` for prompt tokens
a provider served from its cache (defaults to ``input``), ``output`` for completion tokens. The
bundled list (``prices.toml`` in this package) is a starting point; operators override or extend it
in kernel.toml, and may point ``file`` at a price list of their own (same format):

    [plugins.pricing.prices."gpt-4o"]
    input = 2.50
    cached_input = 1.25
    output = 10.00

A record is priced by its public model name, then by ``provider/upstream_model``, then by the
upstream model name, so an alias can have a price of its own or inherit its target's.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import msgspec

from sira_kernel import ConfigError, UsageRecord, hookimpl
from sira_kernel.accounting import PriceBook
from sira_kernel.registrations import ServiceRegistrar

__all__ = ["Price", "PriceList", "PricingConfig", "PricingPlugin"]

PerMillion = Annotated[float, msgspec.Meta(ge=0)]


class Price(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: PerMillion = 0.0
    output: PerMillion = 0.0
    cached_input: PerMillion | None = None


class _PriceFile(msgspec.Struct, forbid_unknown_fields=True):
    models: dict[str, Price] = msgspec.field(default_factory=dict)
    as_of: str | None = None


class PricingConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    """Per-model prices that override (or add to) the bundled list."""
    file: str | None = None
    """A TOML price list of your own (``[models."<id>"]`` tables), applied after the bundled one."""
    bundled: bool = True
    """Start from the bundled list; set false to price only what you configure."""


def _load_file(text: str, where: str) -> dict[str, Price]:
    try:
        return msgspec.convert(tomllib.loads(text), _PriceFile).models
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{where}: invalid price list: {exc}") from None


class PriceList:
    """A :class:`~sira_kernel.accounting.PriceBook` over a dict of per-model prices."""

    def __init__(self, prices: dict[str, Price]) -> None:
        self.prices = prices

    def price_of(self, record: UsageRecord) -> Price | None:
        prices = self.prices
        for key in (record.model, f"{record.provider}/{record.upstream_model}", record.upstream_model):
            if key and key in prices:
                return prices[key]
        return None

    def cost(self, record: UsageRecord) -> float | None:
        price = self.price_of(record)
        if price is None:
            return None
        cached = min(record.cached_tokens, record.prompt_tokens)
        cached_rate = price.input if price.cached_input is None else price.cached_input
        usd = (
            (record.prompt_tokens - cached) * price.input
            + cached * cached_rate
            + record.completion_tokens * price.output
        ) / 1_000_000
        return round(usd, 10)


def build_prices(config: PricingConfig) -> dict[str, Price]:
    prices: dict[str, Price] = {}
    if config.bundled:
        prices.update(_load_file(files(__package__).joinpath("prices.toml").read_text(), "bundled prices.toml"))
    if config.file:
        path = Path(config.file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"plugins.pricing.file: cannot read {path}: {exc.strerror}") from None
        prices.update(_load_file(text, str(path)))
    prices.update(config.prices)
    return prices


class PricingPlugin:
    """Registers a PriceBook service built from the bundled list, a file and kernel.toml overrides."""

    sira_api = 1
    Config = PricingConfig
    provides = ("PriceBook",)

    def __init__(self, config: PricingConfig) -> None:
        self.book = PriceList(build_prices(config))

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        register(PriceBook, self.book)
