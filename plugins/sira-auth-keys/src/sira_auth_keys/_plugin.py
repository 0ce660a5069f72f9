"""The ``auth-keys`` plugin: wires the key authenticator, the ledger and the admin API into the kernel.

* ``sira_configure`` picks the hash secret (``hash_secret``, else the master key) or fails the plugin.
* The lifespan builds the :class:`~sira_auth_keys._auth.KeyAuthenticator`, reads the store's change
  version, and starts two tasks: change polling (cache invalidation, expired holds) and the
  periodic spend refresh from the UsageStore.
* ``sira_authenticate`` / ``sira_authorize`` answer for ``sk-sira-`` keys and abstain otherwise.
* ``usage.request`` records settle budget reservations and free concurrency slots; the
  subscription never loses one (when its queue is full the record is settled at once instead).
* Routes: the admin API (``_admin``) on the admin listener.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable

from sira_kernel import ConfigError, KernelConfig, PluginContext, Principal, RequestInfo, UsageRecord, hookimpl
from sira_kernel.registrations import RouteRegistrar, SubscriptionRegistrar
from sira_kernel.services import ServiceRegistry

from ._admin import AdminPaths, register_admin
from ._auth import KeyAuthenticator
from ._budgets import Ledger
from ._config import AuthKeysConfig
from ._keys import KeyHasher

__all__ = ["AuthKeysPlugin"]

MIN_SECRET_CHARS = 16
USAGE_QUEUE = 65_536


class AuthKeysPlugin:
    """Virtual API keys, tenants, teams, users and roles, limits and budgets, and their admin API."""

    sira_api = 1
    Config = AuthKeysConfig
    requires = ("KeyStore", "AuditStore")

    def __init__(self, config: AuthKeysConfig) -> None:
        self.config = config
        self.ledger = Ledger()
        self.paths = AdminPaths()
        self.authenticator: KeyAuthenticator | None = None
        self._hasher: KeyHasher | None = None
        self._services: ServiceRegistry | None = None
        self._max_body_bytes = 4 * 1024 * 1024
        self._hold_timeout = 660.0

    @hookimpl
    def sira_configure(self, config: KernelConfig) -> None:
        secret = self.config.hash_secret or config.server.master_key
        if secret is None or not secret.reveal():
            raise ConfigError(
                "plugins.auth-keys.hash_secret is not set and there is no server.master_key to fall back on: "
                'set hash_secret = "${SIRA_KEY_SECRET}" (at least 16 characters)'
            )
        which = "plugins.auth-keys.hash_secret" if self.config.hash_secret else "server.master_key (the fallback)"
        if len(secret.reveal()) < MIN_SECRET_CHARS:
            raise ConfigError(f"{which} must be at least {MIN_SECRET_CHARS} characters to hash keys with")
        self._hasher = KeyHasher(secret.reveal())
        self._max_body_bytes = config.limits.max_body_bytes
        self._hold_timeout = self.config.hold_timeout or config.limits.total_timeout + 60.0

    def hash_key(self, key: str) -> str:
        assert self._hasher is not None, "sira_configure runs first"
        return self._hasher(key)

    def services(self) -> ServiceRegistry:
        assert self._services is not None, "the plugin is not running"
        return self._services

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> contextlib.AbstractAsyncContextManager[None]:
        return self._lifespan(context)

    @contextlib.asynccontextmanager
    async def _lifespan(self, context: PluginContext) -> AsyncIterator[None]:
        assert self._hasher is not None
        self._services = context.services
        authenticator = KeyAuthenticator(
            self.config, self._hasher, context.services, self.ledger, self.paths,
            max_body_bytes=self._max_body_bytes, hold_timeout=self._hold_timeout,
        )
        await authenticator.start_version()
        context.start_task(authenticator.poll_changes, name="auth-keys:poll-changes")
        context.start_task(authenticator.refresh_spend, name="auth-keys:refresh-spend")
        self.authenticator = authenticator
        try:
            yield
        finally:
            self.authenticator = None

    @hookimpl
    def sira_register_routes(self, register: RouteRegistrar) -> None:
        register_admin(register, self, self.config.admin_prefix, self.paths)

    @hookimpl
    def sira_register_subscriptions(self, register: SubscriptionRegistrar) -> None:
        register("usage.request", self._on_usage, queue_size=USAGE_QUEUE, overflow="drop_newest",
                 on_drop=self._on_usage, name=f"{register.owner}:settle")

    def _on_usage(self, record: UsageRecord) -> None:
        authenticator = self.authenticator
        if authenticator is not None:
            authenticator.on_usage(record)
        else:
            self.ledger.settle(record.request_id, record.cost_usd, (), record.timestamp)

    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Principal | Awaitable[Principal] | None:
        authenticator = self.authenticator
        if authenticator is None:
            return None
        return authenticator.authenticate(request)

    @hookimpl
    def sira_authorize(self, principal: Principal, request: RequestInfo, operation: str,
                       model: str | None) -> bool | None:
        authenticator = self.authenticator
        if authenticator is None:
            return None
        return authenticator.authorize(principal, request, operation, model)
