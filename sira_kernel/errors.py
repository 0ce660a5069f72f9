"""Every error the kernel raises, and what an HTTP surface answers for it.

The tree::

    SiraError                       base; carries ``status``, ``code`` and ``retry_after``
    ├── ConfigError                 kernel.toml or a plugin section is invalid (names the key path)
    ├── PluginError                 something about one plugin (carries ``plugin_id``)
    │   ├── PluginLoadError         import, config, start or dependency failure while activating
    │   ├── IncompatiblePlugin      the plugin targets a kernel API version this kernel does not speak
    │   └── PluginUnavailable       the plugin is not active (unknown id, failed, or draining)
    ├── RequestError                the client's request is wrong (400)
    │   ├── PayloadTooLarge         the body is over ``limits.max_body_bytes`` (413)
    │   └── ModelNotFound           no provider serves the requested model (404)
    ├── AuthenticationFailed        no valid credentials, or an auth plugin failed (401, fails closed)
    ├── AuthorizationDenied         authenticated, but a plugin voted deny (403)
    ├── CapacityError               the scheduler could not admit the request in time
    │   ├── RateLimited             a token bucket is empty (429 + Retry-After)
    │   └── QueueTimeout            a concurrency pool stayed full past its queue timeout (503 + Retry-After)
    ├── ProviderError               the upstream provider failed; ``retryable`` says if another try may work
    │   ├── ProviderUnavailable     connection refused/reset, 5xx, overload (502)
    │   │   └── ProviderRateLimited the upstream answered 429 (429 + Retry-After when it gave one)
    │   ├── ProviderTimeout         connect, first-token or total deadline passed (504)
    │   └── ProviderRejected        the upstream refused the request as invalid (its 4xx, or 502 for auth)
    ├── BusTimeout                  a bus request got no reply in time
    └── KernelInvariantError        the kernel found its own state inconsistent (a bug; 500)

Messages never contain secrets: provider keys, master keys and virtual keys are redacted before an
error is built, and provider response bodies are truncated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import StreamError

__all__ = [
    "AuthenticationFailed",
    "AuthorizationDenied",
    "BusTimeout",
    "CapacityError",
    "ConfigError",
    "IncompatiblePlugin",
    "KernelInvariantError",
    "ModelNotFound",
    "PayloadTooLarge",
    "PluginError",
    "PluginLoadError",
    "PluginUnavailable",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QueueTimeout",
    "RateLimited",
    "RequestError",
    "SiraError",
]


class SiraError(Exception):
    """Base of every kernel error.

    ``status`` is the HTTP status a surface should answer, ``code`` a stable machine-readable code,
    ``error_type`` the OpenAI-style error type, ``param`` the request field at fault (if any) and
    ``retry_after`` the seconds a client should wait before trying again (if known).
    """

    status: int = 500
    code: str = "internal_error"
    error_type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def stream_event(self) -> StreamError:
        """This error as the ``StreamError`` event that ends a stream it interrupted."""
        from .types import StreamError  # types has no imports from here: no cycle, only a late one

        return StreamError(message=self.message, status=self.status, code=self.code, error_type=self.error_type)


class ConfigError(SiraError):
    """Raised when kernel.toml or a ``[plugins.<id>]`` section is invalid; the message names the key path."""

    code = "config_error"


class PluginError(SiraError):
    """Raised for a problem with one plugin; ``plugin_id`` names it."""

    code = "plugin_error"

    def __init__(self, plugin_id: str, message: str, **kwargs: object) -> None:
        super().__init__(f"plugin {plugin_id!r}: {message}", **kwargs)  # type: ignore[arg-type]
        self.plugin_id = plugin_id
        self.reason = message


class PluginLoadError(PluginError):
    """Raised when a plugin cannot be activated: import, config, dependency, hook or start failure."""

    code = "plugin_load_error"


class IncompatiblePlugin(PluginError):
    """Raised when a plugin declares a kernel API version this kernel does not implement."""

    code = "incompatible_plugin"


class PluginUnavailable(PluginError):
    """Raised when an operation names a plugin that is not active (unknown, failed or draining)."""

    status = 503
    code = "plugin_unavailable"


class RequestError(SiraError):
    """Raised when the client's request is malformed or out of bounds (400)."""

    status = 400
    code = "invalid_request"
    error_type = "invalid_request_error"


class PayloadTooLarge(RequestError):
    """Raised when a request body is larger than ``limits.max_body_bytes`` (413)."""

    status = 413
    code = "request_too_large"


class ModelNotFound(RequestError):
    """Raised when no active provider serves the requested model (404)."""

    status = 404
    code = "model_not_found"


class AuthenticationFailed(SiraError):
    """Raised when the caller is not authenticated. Every auth failure, including a crash, ends here."""

    status = 401
    code = "invalid_api_key"
    error_type = "authentication_error"


class AuthorizationDenied(SiraError):
    """Raised when an authenticated caller is denied by a ``sira_authorize`` vote (403)."""

    status = 403
    code = "permission_denied"
    error_type = "permission_error"


class CapacityError(SiraError):
    """Raised by the scheduler when a request cannot be admitted; always carries ``retry_after``."""

    status = 503
    code = "capacity_exceeded"
    error_type = "server_error"


class RateLimited(CapacityError):
    """Raised when a token bucket (requests/min, tokens/min, budget) has no room (429)."""

    status = 429
    code = "rate_limit_exceeded"
    error_type = "rate_limit_error"


class QueueTimeout(CapacityError):
    """Raised when a concurrency pool stayed full for longer than its queue timeout (503)."""

    status = 503
    code = "queue_timeout"


class ProviderError(SiraError):
    """Raised by provider adapters for upstream failures. ``retryable`` tells a router whether to retry."""

    status = 502
    code = "upstream_error"
    error_type = "api_error"
    retryable = True

    def __init__(self, message: str, *, provider: str | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.provider = provider


class ProviderUnavailable(ProviderError):
    """Raised when the upstream cannot be reached or answers 5xx (502)."""

    code = "upstream_unavailable"


class ProviderRateLimited(ProviderUnavailable):
    """Raised when the upstream answers 429; ``retry_after`` carries its Retry-After when given."""

    status = 429
    code = "upstream_rate_limited"
    error_type = "rate_limit_error"


class ProviderTimeout(ProviderError):
    """Raised when the connect, first-token or total deadline passes (504)."""

    status = 504
    code = "upstream_timeout"


class ProviderRejected(ProviderError):
    """Raised when the upstream refuses the request itself (its 4xx); not retryable."""

    status = 400
    code = "upstream_rejected"
    error_type = "invalid_request_error"
    retryable = False


class BusTimeout(SiraError):
    """Raised when a bus request gets no reply within its timeout."""

    status = 504
    code = "bus_timeout"


class KernelInvariantError(SiraError):
    """Raised when the kernel finds its own state inconsistent: a bug, never a user error."""

    code = "kernel_invariant"
