"""The admin API: roles × routes, no self-escalation, tenant isolation, strict validation, the audit log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sira_auth_keys import KeyHasher
from sira_auth_keys.testing import MASTER, SECRET, Admin, chat

from sira_kernel.testing import ServerThread


@dataclass
class World:
    tenant_a: str
    tenant_b: str
    team_a: str
    team_a2: str
    admin_key: str
    ta: str  # tenant-admin of A (in team_a, narrow limits)
    ta_id: str
    viewer: str
    member: str
    member_id: str
    tb: str  # tenant-admin of B
    b_key_id: str
    secrets: list[str]


@pytest.fixture(scope="module")
def world(admin: Admin) -> World:
    a, b = admin.tenant("tenant-a"), admin.tenant("tenant-b")
    team_a = admin.team(a, "team-a", budget_usd=10.0)
    team_a2 = admin.team(a, "team-a2")
    admin_key, _ = admin.key(a, name="global admin", role="admin")
    ta, ta_record = admin.key(a, name="a admin", role="tenant-admin", team_id=team_a,
                              allowed_models=["fake-1", "fake-2"],
                              limits={"rpm": 100, "budget_usd": 5.0, "budget_period": "weekly"})
    viewer, _ = admin.key(a, name="a viewer", role="viewer")
    member, member_record = admin.key(a, name="a member", role="member")
    tb, _ = admin.key(b, name="b admin", role="tenant-admin")
    _, b_record = admin.key(b, name="b member")
    return World(a, b, team_a, team_a2, admin_key, ta, ta_record["id"], viewer, member, member_record["id"], tb,
                 b_record["id"], [admin_key, ta, viewer, member, tb])


def kernel_admin(server: ServerThread, key: str, path: str = "/api/v1/plugins") -> int:
    return httpx.get(f"{server.admin_url}{path}", headers={"authorization": f"Bearer {key}"}).status_code


def test_roles_by_route(server: ServerThread, admin: Admin, world: World) -> None:
    # the kernel's own admin routes: admins only
    assert kernel_admin(server, MASTER) == 200 and kernel_admin(server, world.admin_key) == 200
    for key in (world.ta, world.viewer, world.member):
        assert kernel_admin(server, key) == 403
        assert kernel_admin(server, key, "/api/v1/plugins/fake/unload") in (403, 405)
    # this plugin's routes: reads for admin, tenant-admin, viewer; changes for admin, tenant-admin
    for key in (MASTER, world.admin_key, world.ta, world.viewer):
        assert admin("GET", "/keys", key=key).status_code == 200
        assert admin("GET", "/audit", key=key).status_code == 200
        assert admin("GET", "/budgets", key=key).status_code == 200
    assert admin("GET", "/keys", key=world.member).status_code == 403
    body = {"name": "made", "tenant_id": world.tenant_a}
    assert admin("POST", "/keys", body, key=world.admin_key).status_code == 201
    assert admin("POST", "/keys", body | {"allowed_models": ["fake-1"], "limits": {"rpm": 1, "budget_usd": 1,
                 "budget_period": "monthly"}}, key=world.ta).status_code == 201
    viewer_try = admin("POST", "/keys", body, key=world.viewer)
    assert viewer_try.status_code == 403 and "read-only" in viewer_try.json()["error"]["message"]
    assert admin("POST", "/keys", body, key=world.member).status_code == 403
    # tenants are for admins
    assert admin("POST", "/tenants", {"name": "nope"}, key=world.ta).status_code == 403
    assert admin("PUT", f"/tenants/{world.tenant_a}", {"name": "renamed"}, key=world.ta).status_code == 403
    assert admin("GET", f"/tenants/{world.tenant_a}", key=world.ta).status_code == 200
    assert [t["id"] for t in admin.ok("GET", "/tenants", key=world.ta)["tenants"]] == [world.tenant_a]
    # viewers and members cannot call models... members can
    assert chat(server, world.viewer).status_code == 403
    assert chat(server, world.member).status_code == 200


def test_no_self_escalation(admin: Admin, world: World) -> None:
    ta = world.ta
    narrow = {"allowed_models": ["fake-1"], "limits": {"rpm": 10, "budget_usd": 1.0, "budget_period": "weekly"}}

    def refused(method: str, path: str, body: dict[str, Any], param: str | None = None) -> None:
        response = admin(method, path, body, key=ta)
        assert response.status_code == 403, (path, body, response.text)
        if param is not None:
            assert response.json()["error"]["param"] == param, response.text

    keys = "/keys"
    base = {"name": "x"} | narrow
    refused("POST", keys, base | {"role": "admin"}, "role")
    refused("POST", keys, base | {"allowed_models": ["fake-1", "fake-3"]}, "allowed_models")
    refused("POST", keys, {"name": "x", "limits": narrow["limits"]}, "allowed_models")  # unrestricted models
    refused("POST", keys, base | {"limits": {"rpm": 1000, "budget_usd": 1.0, "budget_period": "weekly"}},
            "limits.rpm")
    refused("POST", keys, base | {"limits": {"rpm": 10}}, "limits.budget_usd")  # no budget = unlimited
    refused("POST", keys, base | {"limits": {"rpm": 10, "budget_usd": 50.0, "budget_period": "weekly"}},
            "limits.budget_usd")
    refused("POST", keys, base | {"limits": {"rpm": 10, "budget_usd": 1.0, "budget_period": "daily"}},
            "limits.budget_period")
    # its own key: no wider limits, models or role, no move to a team without a budget
    own = f"/keys/{world.ta_id}"
    refused("PUT", own, {"limits": {"rpm": 1000, "budget_usd": 5.0, "budget_period": "weekly"}}, "limits.rpm")
    refused("PUT", own, {"allowed_models": None}, "allowed_models")
    refused("PUT", own, {"role": "admin"}, "role")
    refused("PUT", own, {"team_id": world.team_a2}, "team_id")
    # its own team's budget can only shrink; its tenant is not its to change
    refused("PUT", f"/teams/{world.team_a}", {"limits": {"budget_usd": 1000.0}}, "limits.budget_usd")
    assert admin("PUT", f"/teams/{world.team_a}", {"limits": {"budget_usd": 8.0}}, key=ta).status_code == 200
    # users: no role wider than its own, for others or itself
    refused("POST", "/users", {"email": "boss@example.com", "role": "admin"}, "role")
    user = admin.ok("POST", "/users", {"email": "m@example.com", "role": "member"}, key=ta, status=201)
    refused("PUT", f"/users/{user['id']}", {"role": "admin"}, "role")
    # an admin's key is wider than a tenant-admin: hands off
    admins = [k for k in admin.ok("GET", "/keys", key=ta)["keys"] if k["role"] == "admin"]
    assert admins
    refused("DELETE", f"/keys/{admins[0]['id']}", {})
    refused("PUT", f"/keys/{admins[0]['id']}", {"name": "mine now"})
    # and nothing changed
    mine = admin.ok("GET", own, key=ta)
    assert mine["role"] == "tenant-admin" and mine["limits"]["rpm"] == 100 and mine["team_id"] == world.team_a


def test_a_key_for_a_user_stays_within_the_users_role(admin: Admin, world: World) -> None:
    user = admin.ok("POST", "/users", {"email": "v@example.com", "role": "viewer", "tenant_id": world.tenant_a},
                    status=201)
    response = admin("POST", "/keys", {"name": "u", "tenant_id": world.tenant_a, "user_id": user["id"],
                                       "role": "member"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "role"


def test_tenant_isolation(server: ServerThread, admin: Admin, world: World) -> None:
    for key in (world.ta, world.viewer):
        listed = admin.ok("GET", "/keys", key=key)["keys"]
        assert listed and {k["tenant_id"] for k in listed} == {world.tenant_a}
        assert admin("GET", f"/keys/{world.b_key_id}", key=key).status_code == 404
        assert admin("GET", "/keys", params={"tenant_id": world.tenant_b}, key=key).status_code == 404
        assert admin("GET", f"/tenants/{world.tenant_b}", key=key).status_code == 404
        assert admin("GET", "/teams", params={"tenant_id": world.tenant_b}, key=key).status_code == 404
        assert {t["tenant_id"] for t in admin.ok("GET", "/teams", key=key)["teams"]} == {world.tenant_a}
        audit = admin.ok("GET", "/audit", key=key)["entries"]
        assert audit and {e["tenant_id"] for e in audit} == {world.tenant_a}
        budgets = admin.ok("GET", "/budgets", key=key)["budgets"]
        assert all(b["id"] != world.tenant_b for b in budgets)
    ta = world.ta
    assert admin("DELETE", f"/keys/{world.b_key_id}", key=ta).status_code == 404
    assert admin("POST", f"/keys/{world.b_key_id}/rotate", {}, key=ta).status_code == 404
    assert admin("PUT", f"/keys/{world.b_key_id}", {"name": "stolen"}, key=ta).status_code == 404
    created = admin("POST", "/keys", {"name": "x", "tenant_id": world.tenant_b, "allowed_models": ["fake-1"],
                                      "limits": {"rpm": 1, "budget_usd": 1.0, "budget_period": "weekly"}}, key=ta)
    assert created.status_code == 404
    b_team = admin.team(world.tenant_b, "b-team")
    assert admin("POST", "/keys", {"name": "x", "team_id": b_team, "allowed_models": ["fake-1"],
                                   "limits": {"rpm": 1, "budget_usd": 1.0, "budget_period": "weekly"}},
                 key=ta).status_code == 400  # a team of another tenant is no team of this tenant
    assert admin("DELETE", f"/teams/{b_team}", key=ta).status_code == 404
    assert admin.ok("GET", f"/keys/{world.b_key_id}")["status"] == "active"  # untouched
    assert admin("GET", f"/keys/{world.b_key_id}", key=world.tb).status_code == 200


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "ok", "bogus": 1}, "bogus"),
    ({"name": "bad\nname"}, "name"),
    ({"name": "ok", "allowed_models": "fake-1"}, "allowed_models"),
    ({"name": "ok", "allowed_models": ["fake 1"]}, "allowed_models"),
    ({"name": "ok", "limits": {"rpm": -1}}, "limits.rpm"),
    ({"name": "ok", "limits": {"tpm": "many"}}, "limits.tpm"),
    ({"name": "ok", "role": "superuser"}, "role"),
    ({"name": "ok", "team_id": "x' OR '1'='1"}, "team_id"),
    ({"name": "ok", "expires_in": 0}, "expires_in"),
    ({"name": "ok", "tenant_id": "no-such-tenant"}, None),
])
def test_invalid_bodies_are_400_naming_the_field(admin: Admin, world: World, body: dict[str, Any],
                                                 param: str | None) -> None:
    body = {"tenant_id": world.tenant_a} | body
    response = admin("POST", "/keys", body)
    if param is None:
        assert response.status_code == 404
        return
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_request"
    assert "OR '1'" not in error["message"]  # values are not echoed


def test_invalid_requests(admin: Admin, world: World) -> None:
    assert admin("POST", "/keys", content=b"{not json").status_code == 400
    assert admin("POST", "/keys", content=b"x" * 70_000).status_code == 400
    assert admin("GET", "/keys/..%2F..%2Fplugins").status_code in (400, 404)
    assert admin("GET", "/keys", params={"tenant_id": "a b"}).json()["error"]["param"] == "tenant_id"
    assert admin("GET", "/audit", params={"limit": "100000"}).json()["error"]["param"] == "limit"
    assert admin("GET", "/budgets/project/x").json()["error"]["param"] == "scope"
    assert admin("GET", "/keys/no-such-key").status_code == 404
    assert admin("PATCH", "/keys").status_code == 405
    assert admin("GET", "/keys/x/revoke").status_code == 405  # mutations are POST/PUT/DELETE only


def test_every_admin_action_is_audited_without_secrets(server: ServerThread, admin: Admin, world: World) -> None:
    key, record = admin.key(world.tenant_a, name="audited")
    rotated = admin.ok("POST", f"/keys/{record['id']}/rotate", {"grace_seconds": 0}, status=201)
    admin.ok("POST", f"/keys/{rotated['record']['id']}/revoke")
    admin("POST", "/keys", {"name": "x", "role": "admin"}, key=world.ta)  # denied
    admin("POST", "/keys", {"name": "bad\nname", "tenant_id": world.tenant_a})  # invalid
    entries = admin.ok("GET", "/audit", params=None)["entries"]
    actions = [(e["action"], e["outcome"], e["actor"]) for e in entries]
    assert ("key.create", "ok", "master") in actions
    assert ("key.rotate", "ok", "master") in actions
    assert ("key.revoke", "ok", "master") in actions
    assert ("key.create", "denied", world.ta_id) in actions
    assert ("key.create", "invalid", "master") in actions
    rotate = next(e for e in entries if e["action"] == "key.rotate")
    assert rotate["target_id"] == record["id"] and rotate["tenant_id"] == world.tenant_a
    assert rotate["client"] == "127.0.0.1" and rotate["request_id"].startswith("req-")
    everything = json.dumps(admin.ok("GET", "/audit", params=None) | {"more": entries})
    hasher = KeyHasher(SECRET)
    for secret in [key, rotated["key"], *world.secrets]:
        assert secret not in everything and secret[12:] not in everything
        assert hasher(secret) not in everything
    assert SECRET not in everything and MASTER not in everything
