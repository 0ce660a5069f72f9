"""Role × route × method, generated from the running kernel's route table.

Every admin route (the plugins' routes on the admin listener, read from ``kernel.snapshot.routes``,
and the kernel's own admin routes) is called with every method by a member, a viewer and a tenant
administrator of tenant A, aimed at tenant B's objects. Nothing may succeed: a member never gets
past the guard, a viewer only reads, and a tenant administrator reaches only the auth-keys routes
(tenant-scoped), where tenant B does not exist for it. Listings answer, but show tenant A only. The
database is the same afterwards. And the public listener serves none of these routes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

ROLES = ("member", "viewer", "tenant-admin")


@pytest.fixture(scope="module")
def world(gateway: Any) -> dict[str, Any]:
    a, b = gateway.tenant("matrix-a"), gateway.tenant("matrix-b")
    keys = {role: gateway.key(a, role=role)[0] for role in ROLES}
    b_team = gateway.team(b)
    b_user = gateway.user(b)
    _, b_key = gateway.key(b, team_id=b_team, limits={"budget_usd": 5.0})
    gateway.key(b, role="tenant-admin")
    gateway.team(a)
    gateway.user(a)
    return {"a": a, "b": b, "keys": keys, "b_team": b_team, "b_user": b_user, "b_key": b_key["id"],
            "b_ids": {b, b_team, b_user, b_key["id"]}}


def target(route: Any, world: Any) -> str:
    """The route's path aimed at tenant B's object of the right kind."""
    path = route.path
    kind = path.split("/")[3] if path.count("/") >= 3 else ""
    object_id = {"keys": world["b_key"], "tenants": world["b"], "teams": world["b_team"], "users": world["b_user"],
                 "budgets": world["b_key"]}.get(kind, "x")
    return str(route.fill({"object_id": object_id, "scope": "key", "plugin_id": "provider-mock",
                           "action": "unload", "name": "r"}))


def body(route: Any, world: Any) -> Any:
    """What an admin would send to create or change something in tenant B there."""
    b = world["b"]
    return {
        "/api/v1/keys": {"name": "planted", "tenant_id": b, "role": "admin"},
        "/api/v1/teams": {"name": "planted", "tenant_id": b},
        "/api/v1/users": {"email": "planted@example.com", "tenant_id": b, "role": "admin"},
        "/api/v1/tenants": {"name": "planted"},
        "/api/v1/keys/{object_id}": {"role": "admin", "limits": {"budget_usd": 1000000}},
        "/api/v1/teams/{object_id}": {"name": "renamed", "limits": {"rpm": 1000000}},
        "/api/v1/users/{object_id}": {"role": "admin"},
        "/api/v1/tenants/{object_id}": {"name": "renamed", "disabled": True},
        "/api/v1/keys/{object_id}/rotate": {"grace_seconds": 0},
    }.get(route.path, {})


def shows_only_tenant_a(path: str, response: Any, world: Any) -> bool:
    if path == "/api/v1/audit":
        # tenant A's log: what A's callers did, including the ids they tried (B's, here) and failed on
        return all(entry["tenant_id"] == world["a"] for entry in response.json()["entries"])
    return not any(i in response.text for i in world["b_ids"])


LISTINGS = {"/api/v1/keys", "/api/v1/tenants", "/api/v1/teams", "/api/v1/users", "/api/v1/budgets", "/api/v1/audit"}


def test_the_matrix_covers_every_admin_route(gateway: Any) -> None:
    owners = {r.owner for r in gateway.routes("admin")}
    assert {"kernel", "auth-keys", "ledger", "router"} <= owners
    assert len(gateway.routes("admin")) >= 25


@pytest.mark.parametrize("role", ROLES)
def test_no_non_admin_role_succeeds_on_any_admin_route_with_any_method(gateway: Any, sec: Any, world: Any,
                                                                       role: str) -> None:
    key = world["keys"][role]
    before = gateway.dump()
    wrong = []
    for route in gateway.routes("admin"):
        tenant_scoped = route.owner == "auth-keys"
        path = target(route, world)
        for method in sec.METHODS:
            payload = body(route, world) if method in ("POST", "PUT", "PATCH") else None
            response = gateway.admin(method, path, key, json=payload)
            status = response.status_code
            if not tenant_scoped or role == "member":
                ok = status == 403  # the guard: this role has no business here
            elif route.path in LISTINGS and method in ("GET", "HEAD"):
                ok = status == 200 and (method == "HEAD" or shows_only_tenant_a(route.path, response, world))
            elif role == "viewer":
                ok = status in (403, 404) if method in ("GET", "HEAD") else status == 403
                ok = ok or (status == 405 and method in ("GET", "HEAD"))
            else:  # a tenant admin: tenant B's objects do not exist for it; tenants are admin-only
                ok = status in (403, 404, 405)
            if not ok:
                wrong.append((role, method, path, status, response.text[:120]))
    assert not wrong, wrong[:10]
    sec.assert_unchanged(before, gateway.dump())
    assert "provider-mock" in gateway.ok("GET", "/api/v1/health")["providers"]


@pytest.mark.parametrize("role", ["viewer", "tenant-admin"])
def test_listings_and_filters_stay_inside_the_callers_tenant(gateway: Any, world: Any, role: str) -> None:
    key = world["keys"][role]
    for path in sorted(LISTINGS):
        mine = gateway.admin("GET", path, key)
        assert mine.status_code == 200, (path, mine.text)
        assert shows_only_tenant_a(path, mine, world), path
        if path != "/api/v1/tenants":
            other = gateway.admin("GET", path, key, params={"tenant_id": world["b"]})
            assert other.status_code == 404, (path, other.status_code)
    for path in (f"/api/v1/budgets/tenant/{world['b']}", f"/api/v1/budgets/team/{world['b_team']}",
                 f"/api/v1/keys?team_id={world['b_team']}"):
        response = gateway.admin("GET", path, key)
        assert response.status_code == 404 or not any(i in response.text for i in world["b_ids"]), path


def test_an_admin_can_do_what_the_matrix_refused(gateway: Any, world: Any) -> None:
    # The control: the same reads succeed for the master key, so the refusals above are about roles.
    for route in gateway.routes("admin"):
        if route.owner == "auth-keys" and "GET" in route.methods:
            response = gateway.admin("GET", target(route, world))
            assert response.status_code == 200, (route.path, response.text)
    found = gateway.ok("GET", "/api/v1/keys", params={"tenant_id": world["b"]})
    assert world["b_key"] in json.dumps(found)


def test_the_public_listener_serves_no_admin_route(gateway: Any, sec: Any, world: Any) -> None:
    wrong = []
    for route in gateway.routes("admin"):
        path = target(route, world)
        for method in sec.METHODS:
            for key in (sec.MASTER, world["keys"]["tenant-admin"], None):
                response = gateway.call("public", method, path, key, json={} if method in ("POST", "PUT") else None)
                if response.status_code not in (401, 404, 405):
                    wrong.append((method, path, key is not None, response.status_code))
    assert not wrong, wrong[:10]


def test_router_admin_on_the_public_listener_authorizes_like_the_admin_guard(start_gateway: Any, sec: Any) -> None:
    # admin_listener = "public" (for gateways without an admin listener): the router guards its
    # routes itself. It must ask sira_authorize as the admin guard does, or a key's allowed_routes
    # (and any plugin's deny vote) would not apply there.
    gateway = start_gateway(sections={"router": {"admin_listener": "public"}})
    tenant = gateway.tenant("router-public")
    scoped_admin, _ = gateway.key(tenant, role="admin", allowed_routes=["/v1/chat/completions"])
    member, _ = gateway.key(tenant)
    assert gateway.call("public", "GET", "/api/v1/rules", sec.MASTER).status_code == 200
    assert gateway.call("public", "GET", "/api/v1/rules", None).status_code == 401
    for key in (scoped_admin, member):
        for method, path in (("GET", "/api/v1/rules"), ("GET", "/api/v1/route/decision-log"),
                             ("POST", "/api/v1/route/breakers/reset"), ("DELETE", "/api/v1/rules/x")):
            response = gateway.call("public", method, path, key, json={} if method == "POST" else None)
            assert response.status_code == 403, (method, path, response.status_code, response.text)
    assert gateway.chat(scoped_admin).status_code == 200  # what the key may call still works
