"""Self-escalation: nobody grants more than it holds, changes its own role, or resets its own limits.

A tenant administrator whose own key is bounded (models, routes, rates, concurrency, budget,
expiry) tries to mint a wider key, widen its own key, its user, its team or its tenant, act on
another tenant, touch an admin's key in its own tenant, and reset a spent budget by rotating the
key. Members and viewers try to change their own key. Every attempt is refused, and the database is
unchanged by all of them.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

BOUNDS = {"rpm": 60, "tpm": 100_000, "max_concurrent": 5, "budget_usd": 1.0, "budget_period": "monthly"}
ROUTES = ["/v1/*", "/api/v1/*"]


@pytest.fixture(scope="module")
def world(gateway: Any) -> dict[str, Any]:
    a, b = gateway.tenant("esc-a"), gateway.tenant("esc-b")
    team = gateway.team(a, budget_usd=1.0)
    user = gateway.user(a, role="tenant-admin")
    expires = time.time() + 86_400
    boss, boss_record = gateway.key(a, role="tenant-admin", team_id=team, user_id=user, allowed_models=["mock-1"],
                                    allowed_routes=ROUTES, limits=BOUNDS, expires_at=expires)
    member, member_record = gateway.key(a)
    viewer, viewer_record = gateway.key(a, role="viewer")
    _, admin_record = gateway.key(a, role="admin")
    _, b_record = gateway.key(b)
    return {"a": a, "b": b, "team": team, "user": user, "expires": expires, "boss": boss, "boss_record": boss_record,
            "member": member, "member_record": member_record, "viewer": viewer, "viewer_record": viewer_record,
            "admin_record": admin_record, "b_record": b_record}


def within(world: Any, **changes: Any) -> dict[str, Any]:
    """A key body exactly within the boss's own key, with ``changes`` applied (None deletes)."""
    body: dict[str, Any] = {"name": "minted", "tenant_id": world["a"], "role": "member", "allowed_models": ["mock-1"],
                            "allowed_routes": ["/v1/*"], "limits": dict(BOUNDS), "expires_at": world["expires"] - 60}
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def limits(**changes: Any) -> dict[str, Any]:
    out = dict(BOUNDS)
    for name, value in changes.items():
        if value is None:
            out.pop(name)
        else:
            out[name] = value
    return out


def attempts(world: Any) -> list[tuple[str, str, str, Any, set[int]]]:
    """(who, method, path, body, acceptable statuses): every one an escalation."""
    boss = "boss"
    own = world["boss_record"]["id"]
    return [
        (boss, "POST", "/api/v1/keys", within(world, role="admin"), {403}),
        (boss, "POST", "/api/v1/keys", within(world, tenant_id=world["b"]), {404}),
        (boss, "POST", "/api/v1/keys", within(world, allowed_models=["mock-1", "mock-large"]), {403}),
        (boss, "POST", "/api/v1/keys", within(world, allowed_models=None), {403}),
        (boss, "POST", "/api/v1/keys", within(world, allowed_routes=["/*"]), {403}),
        (boss, "POST", "/api/v1/keys", within(world, allowed_routes=["/health"]), {403}),
        (boss, "POST", "/api/v1/keys", within(world, allowed_routes=None), {403}),
        (boss, "POST", "/api/v1/keys", within(world, limits=limits(rpm=61)), {403}),
        (boss, "POST", "/api/v1/keys", within(world, limits=limits(rpm=None)), {403}),
        (boss, "POST", "/api/v1/keys", within(world, limits=limits(tpm=100_001)), {403}),
        (boss, "POST", "/api/v1/keys", within(world, limits=limits(max_concurrent=6)), {403}),
        (boss, "POST", "/api/v1/keys", within(world, limits=limits(budget_usd=1.01)), {403}),
        (boss, "POST", "/api/v1/keys", within(world, limits=limits(budget_usd=None)), {403}),
        (boss, "POST", "/api/v1/keys", within(world, limits=limits(budget_period="daily")), {403}),
        (boss, "POST", "/api/v1/keys", within(world, expires_at=None), {403}),
        (boss, "POST", "/api/v1/keys", within(world, expires_at=None, expires_in=30 * 86_400), {403}),
        (boss, "POST", "/api/v1/keys", within(world, metadata={"sira:lineage": world["admin_record"]["id"]}), {400}),
        (boss, "PUT", f"/api/v1/keys/{own}", {"role": "admin"}, {403}),
        (boss, "PUT", f"/api/v1/keys/{own}", {"limits": limits(budget_usd=1000)}, {403}),
        (boss, "PUT", f"/api/v1/keys/{own}", {"limits": limits(rpm=None)}, {403}),
        (boss, "PUT", f"/api/v1/keys/{own}", {"allowed_models": None}, {403}),
        (boss, "PUT", f"/api/v1/keys/{own}", {"allowed_routes": ["/*"]}, {403}),
        (boss, "PUT", f"/api/v1/keys/{own}", {"expires_at": None}, {403}),
        (boss, "PUT", f"/api/v1/keys/{own}", {"team_id": None}, {403}),
        (boss, "PUT", f"/api/v1/keys/{own}", {"metadata": {"sira:lineage": "key_x"}}, {400}),
        (boss, "PUT", f"/api/v1/users/{world['user']}", {"role": "admin"}, {403}),
        (boss, "PUT", f"/api/v1/teams/{world['team']}", {"limits": {"budget_usd": 1000}}, {403}),
        (boss, "PUT", f"/api/v1/teams/{world['team']}", {"limits": {}}, {403}),
        (boss, "DELETE", f"/api/v1/teams/{world['team']}", None, {403}),
        (boss, "PUT", f"/api/v1/tenants/{world['a']}", {"limits": {"budget_usd": 1000}}, {403}),
        (boss, "PUT", f"/api/v1/tenants/{world['a']}", {"disabled": False}, {403}),
        (boss, "DELETE", f"/api/v1/tenants/{world['a']}", None, {403}),
        (boss, "POST", "/api/v1/tenants", {"name": "mine"}, {403}),
        (boss, "POST", "/api/v1/users", {"email": "x@example.com", "tenant_id": world["a"], "role": "admin"}, {403}),
        (boss, "POST", "/api/v1/users", {"email": "x@example.com", "tenant_id": world["b"]}, {404}),
        (boss, "POST", "/api/v1/teams", {"name": "mine", "tenant_id": world["b"]}, {404}),
        (boss, "PUT", f"/api/v1/keys/{world['admin_record']['id']}", {"role": "member"}, {403}),
        (boss, "POST", f"/api/v1/keys/{world['admin_record']['id']}/revoke", None, {403}),
        (boss, "POST", f"/api/v1/keys/{world['admin_record']['id']}/rotate", {}, {403}),
        (boss, "GET", f"/api/v1/keys/{world['b_record']['id']}", None, {404}),
        (boss, "PUT", f"/api/v1/keys/{world['b_record']['id']}", {"name": "mine"}, {404}),
        (boss, "POST", f"/api/v1/keys/{world['b_record']['id']}/rotate", {}, {404}),
        (boss, "DELETE", f"/api/v1/keys/{world['b_record']['id']}", None, {404}),
        (boss, "POST", "/api/v1/plugins/auth-keys/reload", None, {403}),
        ("member", "PUT", f"/api/v1/keys/{world['member_record']['id']}", {"role": "admin"}, {403}),
        ("member", "POST", "/api/v1/keys", within(world, role="member"), {403}),
        ("member", "POST", f"/api/v1/keys/{world['member_record']['id']}/rotate", {}, {403}),
        ("viewer", "PUT", f"/api/v1/keys/{world['viewer_record']['id']}", {"role": "tenant-admin"}, {403}),
        ("viewer", "POST", "/api/v1/keys", within(world, role="viewer"), {403}),
        ("viewer", "POST", f"/api/v1/keys/{world['viewer_record']['id']}/rotate", {}, {403}),
    ]


def test_every_escalation_is_refused_and_changes_nothing(gateway: Any, sec: Any, world: Any) -> None:
    control = gateway.admin("POST", "/api/v1/keys", world["boss"], json=within(world))
    assert control.status_code == 201, control.text  # exactly its own bounds: allowed
    before = gateway.dump()
    wrong = []
    for who, method, path, body, statuses in attempts(world):
        response = gateway.admin(method, path, world[who], json=body)
        if response.status_code not in statuses:
            wrong.append((who, method, path, body, response.status_code, response.text[:150]))
    assert not wrong, wrong[:5]
    sec.assert_unchanged(before, gateway.dump())
    own = gateway.ok("GET", f"/api/v1/keys/{world['boss_record']['id']}")
    assert own["role"] == "tenant-admin" and own["limits"] == limits() and own["allowed_models"] == ["mock-1"]


def test_a_spent_budget_survives_rotation_by_anyone(gateway: Any, sec: Any, world: Any) -> None:
    body = within(world, limits=limits(budget_usd=0.06, budget_period="total"))
    created = gateway.ok("POST", "/api/v1/keys", world["boss"], json=body, status=201)
    key, record = created["key"], created["record"]
    first = gateway.chat(key)
    assert first.status_code == 200, first.text
    gateway.wait_usage([first.headers["x-request-id"]])
    refused = gateway.chat(key)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    current, current_id = key, record["id"]
    for rotator in (world["boss"], sec.MASTER):
        rotated = gateway.ok("POST", f"/api/v1/keys/{current_id}/rotate", rotator, json={"grace_seconds": 0},
                             status=201)
        current, current_id = rotated["key"], rotated["record"]["id"]
        assert rotated["record"]["principal_id"] == record["id"]
        again = gateway.chat(current)
        assert again.status_code == 429, again.text
        assert again.json()["error"]["code"] == "budget_exceeded"
    view = gateway.ok("GET", f"/api/v1/budgets/key/{current_id}")
    assert view["spent_usd"] > 0 and view["id"] == record["id"]

