"""Helpers for testing auth-keys (its own tests and the gateway's end-to-end tests).

* :func:`gateway_factory` builds a kernel with the installed ``storage-sqlite`` on a database file,
  ``auth-keys``, ``api-openai`` and a fake provider (``fake-1``, ``fake-2``, ``fake-3``), optionally
  a flat :class:`FlatPricingPlugin` price book; serve it with ``sira_kernel.testing.ServerThread``.
* :class:`Admin` is a small client of the admin API; :func:`chat` sends a chat completion.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec

from sira_kernel import Kernel, UsageRecord, hookimpl
from sira_kernel.accounting import PriceBook
from sira_kernel.registrations import ServiceRegistrar
from sira_kernel.testing import FakeProviderPlugin, ServerThread, make_kernel

from ._plugin import AuthKeysPlugin

__all__ = ["MASTER", "SECRET", "Admin", "FlatPrice", "FlatPricingPlugin", "chat", "gateway_factory"]

MASTER = "sk-master-auth-keys-test-0123"
SECRET = "auth-keys-test-hash-secret-0123456789"


class FlatPrice:
    """USD per token, for every model."""

    def __init__(self, usd_per_token: float) -> None:
        self.usd_per_token = usd_per_token

    def cost(self, record: UsageRecord) -> float | None:
        return (record.prompt_tokens + record.completion_tokens) * self.usd_per_token


class FlatPricingPlugin:
    sira_api = 1
    provides = ("PriceBook",)

    class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        usd_per_token: float = 0.001

    def __init__(self, config: Config) -> None:
        self.book = FlatPrice(config.usd_per_token)

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        register(PriceBook, self.book)


def gateway_factory(
    db: Path | str,
    auth: dict[str, Any] | None = None,
    fake: dict[str, Any] | None = None,
    price: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Callable[[], Kernel]:
    """A kernel factory: storage-sqlite (the installed plugin) on ``db``, auth-keys, api-openai, a
    fake provider serving fake-1/fake-2/fake-3 and, with ``price``, a flat PriceBook."""
    plugins: dict[str, Any] = {"auth-keys": AuthKeysPlugin, "fake": FakeProviderPlugin}
    enable = ["storage-sqlite", "auth-keys", "api-openai", "fake"]
    config: dict[str, Any] = {
        "server": {"master_key": MASTER},
        "kernel": {"drain_timeout": 2.0},
        "plugins": {
            "storage-sqlite": {"path": str(db)},
            "auth-keys": {"hash_secret": SECRET, **(auth or {})},
            "fake": {"models": ["fake-1", "fake-2", "fake-3"], **(fake or {})},
        },
        **(extra or {}),
    }
    if price is not None:
        plugins["pricing-flat"] = FlatPricingPlugin
        enable.append("pricing-flat")
        config["plugins"]["pricing-flat"] = {"usd_per_token": price}
    return lambda: make_kernel(plugins, config, enable=enable)


class Admin:
    """A small client of the auth-keys admin API."""

    def __init__(self, server: ServerThread, key: str = MASTER) -> None:
        self.server = server
        self.credential = key
        self.client = httpx.Client(base_url=server.admin_url, timeout=10)

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def __call__(self, method: str, path: str, json: Any = None, key: str | None = None,
                 params: dict[str, Any] | None = None, content: bytes | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {key or self.credential}"}
        return self.client.request(method, f"/api/v1{path}", json=json, params=params, headers=headers,
                                   content=content)

    def ok(self, method: str, path: str, json: Any = None, key: str | None = None, status: int = 200,
           params: dict[str, Any] | None = None) -> Any:
        response = self(method, path, json, key, params)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def tenant(self, name: str, **limits: Any) -> str:
        return str(self.ok("POST", "/tenants", {"name": name, "limits": limits}, status=201)["id"])

    def team(self, tenant_id: str, name: str, **limits: Any) -> str:
        body = {"tenant_id": tenant_id, "name": name, "limits": limits}
        return str(self.ok("POST", "/teams", body, status=201)["id"])

    def key(self, tenant_id: str | None = None, key: str | None = None, **body: Any) -> tuple[str, dict[str, Any]]:
        body.setdefault("name", "test key")
        if tenant_id is not None:
            body["tenant_id"] = tenant_id
        created = self.ok("POST", "/keys", body, key=key, status=201)
        return created["key"], created["record"]


def chat(server: ServerThread, key: str, model: str = "fake-1", content: str = "hi", path: str = "/v1/chat/completions",
         **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{server.base_url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)
