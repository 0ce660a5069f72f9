"""Where a request goes: deployments, routes and the table of served models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from .providers import Provider
from .types import ModelInfo

__all__ = ["Deployment", "Route", "RouteTable"]


class Deployment(msgspec.Struct, frozen=True):
    """One concrete target: the provider (by name) and the model name to send upstream."""

    provider: str
    model: str


class Route(msgspec.Struct, frozen=True):
    """A routing decision. ``deployments[0]`` is tried first; the rest are fallbacks in order.

    ``reason`` is a short human-readable explanation kept for the decision log.
    """

    deployments: tuple[Deployment, ...]
    reason: str = ""


class RouteTable:
    """The models the active providers serve, in one immutable snapshot.

    ``lookup("gpt-4o")`` finds every deployment serving that public id; ``"provider/model"``
    addresses one provider explicitly.
    """

    __slots__ = ("_by_model", "_infos", "providers")

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self.providers: Mapping[str, Provider] = providers
        by_model: dict[str, list[Deployment]] = {}
        infos: dict[str, ModelInfo] = {}
        for name, provider in providers.items():
            for info in provider.models():
                by_model.setdefault(info.id, []).append(Deployment(name, info.upstream or info.id))
                infos.setdefault(info.id, info)
        self._by_model = {k: tuple(v) for k, v in by_model.items()}
        self._infos = infos

    def lookup(self, model: str) -> tuple[Deployment, ...]:
        found = self._by_model.get(model)
        if found:
            return found
        provider, sep, upstream = model.partition("/")
        if sep and provider in self.providers:
            for info in self.providers[provider].models():
                if info.id == upstream or info.upstream == upstream:
                    return (Deployment(provider, info.upstream or info.id),)
        return ()

    def models(self) -> Iterable[ModelInfo]:
        return self._infos.values()

    def info(self, model: str) -> ModelInfo | None:
        return self._infos.get(model)
