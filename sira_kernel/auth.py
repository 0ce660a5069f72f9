"""Who is calling: the request facts auth plugins see, and the principal they answer with."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["LimitSpec", "Principal", "RequestInfo"]


class RequestInfo(msgspec.Struct, kw_only=True):
    """HTTP-level facts about one request, as the surface received them.

    ``path`` is the raw ASGI path (never rebuilt from the Host header). ``headers`` has lower-cased
    names. ``request_id`` is the id bound to every log line of this request.
    """

    method: str
    path: str
    headers: dict[str, str]
    client: str | None = None
    surface: str = "openai"
    request_id: str = ""
    route: str | None = None
    """Set by the pipeline once a provider answered: ``"<provider>/<model>; attempts=<n>"``, for
    surfaces to send back (``x-sira-route``)."""

    @property
    def bearer_token(self) -> str | None:
        """The credential from ``Authorization: Bearer …``, ``x-api-key`` or ``api-key``, if any."""
        auth = self.headers.get("authorization")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
        return self.headers.get("x-api-key") or self.headers.get("api-key")


class LimitSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A rate limit to enforce for a principal: ``per_minute`` requests or tokens on ``key``."""

    key: tuple[str, ...]
    per_minute: float
    unit: str = "requests"  # "requests" or "tokens"


class Principal(msgspec.Struct, kw_only=True):
    """An authenticated caller. ``kind`` is "anonymous", "master" or whatever an auth plugin uses."""

    id: str
    kind: str = "anonymous"
    tenant: str | None = None
    team: str | None = None
    roles: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] | None = None
    limits: tuple[LimitSpec, ...] = ()
    max_output_tokens: int | None = None
    """An output cap the pipeline enforces on this principal's chat requests (it lowers or sets
    ``max_tokens``, shared between ``n`` choices). A plugin that reserves a budget on an estimate
    of the output sets it to that estimate, so the estimate is a bound, not a guess."""
    priority: int = 1
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


ANONYMOUS = Principal(id="anonymous")
