"""The admin listener: fails closed, admin role only, hot load/unload/reload over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from sira_kernel import Principal, RequestInfo, hookimpl
from sira_kernel.registrations import RouteRegistrar
from sira_kernel.testing import FakeProviderPlugin, ServerThread, make_kernel

MASTER = "sk-admin-test-master-0123"


class Members:
    """Authenticates "sk-member-…" as a plain member (no admin role)."""

    sira_api = 1

    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        if request.bearer_token == "sk-member-0123456789":
            return Principal(id="member", kind="key", roles=("member",))
        return None


class Delegates:
    """Lets members reach its own admin route, and nothing else on the admin listener."""

    sira_api = 1

    @hookimpl
    def sira_authorize(self, principal: Principal, request: RequestInfo, operation: str) -> bool | None:
        if operation == "admin" and "member" in principal.roles and request.path == "/api/v1/delegated":
            return True
        return None

    @hookimpl
    def sira_register_routes(self, register: RouteRegistrar) -> None:
        async def delegated(request: Request) -> Response:
            return Response(request.scope["sira.principal"].id)

        register("/api/v1/delegated", delegated, methods=["GET"], listener="admin")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = {"server": {"master_key": MASTER}, "kernel": {"drain_timeout": 2.0}}
    plugins = {"members": Members, "delegates": Delegates, "fake": FakeProviderPlugin}
    enable = ["members", "delegates", "fake", "api-openai"]  # the installed OpenAI surface
    with ServerThread(lambda: make_kernel(plugins, config, enable=enable)) as running:
        yield running


def admin(server: ServerThread, method: str, path: str, key: str | None = MASTER) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{server.admin_url}{path}", headers=headers, timeout=10)


@pytest.mark.parametrize("key", [None, "sk-wrong-0123456789"])
def test_admin_requires_credentials(server: ServerThread, key: str | None) -> None:
    response = admin(server, "GET", "/api/v1/plugins", key)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert admin(server, "GET", "/api/v1/no-such-route", key).status_code == 401  # even unknown paths


def test_admin_refuses_non_admin_principals(server: ServerThread) -> None:
    response = admin(server, "POST", "/api/v1/plugins/fake/unload", "sk-member-0123456789")
    assert response.status_code == 403
    assert server.kernel.plugins.handles["fake"].state.value == "active"


def test_an_explicit_allow_vote_admits_a_non_admin_to_that_route_only(server: ServerThread) -> None:
    member = "sk-member-0123456789"
    response = admin(server, "GET", "/api/v1/delegated", member)
    assert response.status_code == 200 and response.text == "member"
    assert admin(server, "GET", "/api/v1/plugins", member).status_code == 403


def test_public_listener_serves_no_admin_route(server: ServerThread) -> None:
    for path in ("/api/v1/plugins", "/api/v1/health", "/api/v1/bus"):
        response = httpx.get(f"{server.base_url}{path}", headers={"authorization": f"Bearer {MASTER}"})
        assert response.status_code == 404, path


def test_plugins_unload_load_reload_over_http(server: ServerThread) -> None:
    listed = {p["id"]: p["state"] for p in admin(server, "GET", "/api/v1/plugins").json()["plugins"]}
    assert listed["fake"] == "active"
    chat = {"model": "fake-1", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"authorization": f"Bearer {MASTER}"}
    assert admin(server, "POST", "/api/v1/plugins/fake/unload?drain_timeout=1").json()["state"] == "stopped"
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat, headers=auth)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert admin(server, "POST", "/api/v1/plugins/fake/unload").status_code == 503  # not active any more
    loaded = admin(server, "POST", "/api/v1/plugins/fake/load").json()
    assert loaded["state"] == "active"
    reloaded = admin(server, "POST", "/api/v1/plugins/fake/reload").json()
    assert reloaded["generation"] > loaded["generation"]
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=chat, headers=auth).status_code == 200
    assert admin(server, "POST", "/api/v1/plugins/no-such-plugin/load").status_code == 422
    assert admin(server, "POST", "/api/v1/plugins/fake/explode").status_code == 400
    assert admin(server, "GET", "/api/v1/plugins/fake/unload").status_code == 405


def test_health_and_bus_stats(server: ServerThread) -> None:
    assert admin(server, "GET", "/api/v1/health").json()["ready"] is True
    assert "subscriptions" in admin(server, "GET", "/api/v1/bus").json()


class TenantAdmins:
    """Admits "sk-tenant-admin-…" to the admin listener by an explicit allow vote, without the admin role."""

    sira_api = 1

    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        if request.bearer_token == "sk-tenant-admin-0123456789":
            return Principal(id="ta", kind="key", tenant="t1", roles=("tenant-admin",))
        return None

    @hookimpl
    def sira_authorize(self, principal: Principal, operation: str) -> bool | None:
        return True if operation == "admin" and "tenant-admin" in principal.roles else None


def test_kernel_admin_endpoints_need_the_admin_role_even_when_a_plugin_admits_others() -> None:
    plugins = {"tenants": TenantAdmins, "fake": FakeProviderPlugin}
    with ServerThread(lambda: make_kernel(plugins, {"server": {"master_key": MASTER}})) as running:
        key = "sk-tenant-admin-0123456789"
        for method, path in [("GET", "/api/v1/plugins"), ("POST", "/api/v1/plugins/fake/unload"),
                             ("GET", "/api/v1/health"), ("GET", "/api/v1/bus")]:
            assert admin(running, method, path, key).status_code == 403, path
        assert running.kernel.plugins.handles["fake"].state.value == "active"
        assert admin(running, "GET", "/api/v1/plugins").status_code == 200  # the master key still can
