"""Where a request goes: deployments, routes and the table of served models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from .providers import Provider
from .types import ModelInfo

if TYPE_CHECKING:
    from .errors import ProviderError

__all__ = ["AttemptPlan", "Deployment", "Route", "RouteTable", "SingleAttempt"]


class Deployment(msgspec.Struct, frozen=True):
    """One concrete target: the provider (by name) and the model name to send upstream."""

    provider: str
    model: str


class Route(msgspec.Struct, frozen=True):
    """A routing decision: the deployments that may serve the request, best first.

    ``plan`` decides which deployment each attempt goes to and whether another attempt is made
    (retries, fallbacks, backoff): an :class:`AttemptPlan` made for this one request. Without one
    the kernel makes a single attempt on ``deployments[0]`` — the kernel itself never retries.
    ``reason`` is a short human-readable explanation kept for the decision log.
    """

    deployments: tuple[Deployment, ...]
    reason: str = ""
    plan: Any = None


@runtime_checkable
class AttemptPlan(Protocol):
    """The retry/fallback policy of one request, supplied by a routing plugin in ``Route.plan``.

    The pipeline runs the loop: before each attempt it awaits :meth:`next` with the previous
    attempt's failure (None before the first) and the seconds left before the request's deadline;
    the plan returns the deployment to try (after sleeping for backoff, if it wants) or None to stop,
    in which case the last failure goes to the client. After each attempt the pipeline calls
    :meth:`report`. For streams, attempts stop once the first event has reached the client.
    """

    async def next(self, failure: ProviderError | None, remaining: float) -> Deployment | None:
        ...

    def report(
        self, deployment: Deployment, error: ProviderError | None, latency_s: float, first_token_s: float | None
    ) -> None:
        ...


class SingleAttempt:
    """The kernel's default plan: one attempt on the first deployment."""

    __slots__ = ("_deployment",)

    def __init__(self, deployment: Deployment) -> None:
        self._deployment: Deployment | None = deployment

    async def next(self, failure: ProviderError | None, remaining: float) -> Deployment | None:
        deployment, self._deployment = self._deployment, None
        return deployment

    def report(
        self, deployment: Deployment, error: ProviderError | None, latency_s: float, first_token_s: float | None
    ) -> None:
        return None


class RouteTable:
    """The models the active providers serve, in one immutable snapshot.

    ``lookup("gpt-4o")`` finds every deployment serving that public id; ``"provider/model"``
    addresses one provider explicitly.
    """

    __slots__ = ("_by_deployment", "_by_model", "_infos", "providers")

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self.providers: Mapping[str, Provider] = providers
        by_model: dict[str, list[Deployment]] = {}
        infos: dict[str, ModelInfo] = {}
        by_deployment: dict[Deployment, ModelInfo] = {}
        for name, provider in providers.items():
            for info in provider.models():
                deployment = Deployment(name, info.upstream or info.id)
                by_model.setdefault(info.id, []).append(deployment)
                infos.setdefault(info.id, info)
                by_deployment.setdefault(deployment, info)
        self._by_model = {k: tuple(v) for k, v in by_model.items()}
        self._infos = infos
        self._by_deployment = by_deployment

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

    def deployment_info(self, deployment: Deployment) -> ModelInfo | None:
        """What the provider lists for ``deployment`` (a model it serves under that upstream name)."""
        return self._by_deployment.get(deployment)
