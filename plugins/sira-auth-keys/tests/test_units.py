"""Key format and hashing, roles and grants, body validation, and the budget ledger, without a kernel."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest
import sira_auth_keys
from sira_auth_keys import (
    Actor,
    BudgetExceeded,
    ConcurrencyLimited,
    Denied,
    KeyHasher,
    Ledger,
    check_key_grant,
    generate_key,
    is_well_formed,
    period_bounds,
    role_within,
)
from sira_auth_keys._policy import RoutePatterns, effective_role
from sira_auth_keys._schema import Invalid, KeyCreate, KeyUpdate, decode

from sira_kernel.storage import KeyRecord, Limits


def test_public_api() -> None:
    assert sorted(sira_auth_keys.__all__) == sorted(
        ["KEY_PREFIX", "PERMISSIONS", "Actor", "AuthKeysConfig", "AuthKeysPlugin", "BudgetExceeded",
         "BudgetUnavailable", "ConcurrencyLimited", "Denied", "KeyHasher", "Ledger", "check_key_grant",
         "generate_key", "is_well_formed", "period_bounds", "role_within"]
    )


def test_generated_keys_are_long_random_base62() -> None:
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith("sk-sira-") and len(key) == 8 + 40 and key[8:].isalnum() and key.isascii()
        assert is_well_formed(key)
    assert len(generate_key(32)) == 40 and len(generate_key(64)) == 72
    with pytest.raises(ValueError):
        generate_key(31)


@pytest.mark.parametrize("token", [
    "sk-sira-", "sk-sira-short", "sk-sira-" + "a" * 31, "sk-sira-" + "a" * 65, "sk-sira-" + "a" * 39 + "!",
    "sk-sira-" + "a" * 39 + "é", "sk-sira-" + "a" * 39 + " ", "sk-sira-" + "a" * 20 + "' OR 1=1 --" + "a" * 10,
    "sk-sira-" + "a" * 39 + "\x00",
])
def test_malformed_keys(token: str) -> None:
    assert not is_well_formed(token)


def test_the_hash_is_hmac_sha256_with_the_secret() -> None:
    hasher = KeyHasher("secret-0123456789abcdef")
    key = generate_key()
    expected = hmac.new(b"secret-0123456789abcdef", key.encode(), hashlib.sha256).hexdigest()
    assert hasher(key) == expected == hasher(key)
    assert KeyHasher("another-secret-0123456789")(key) != expected
    assert "0123456789abcdef" not in repr(hasher)


def test_roles_are_permission_sets() -> None:
    assert role_within("member", "tenant-admin") and role_within("viewer", "tenant-admin")
    assert role_within("tenant-admin", "admin") and not role_within("admin", "tenant-admin")
    assert not role_within("viewer", "member") and not role_within("member", "viewer")
    assert effective_role("tenant-admin", "member") == "member"
    assert effective_role("member", "admin") == "member"
    assert effective_role("member", "viewer") is None


def test_route_patterns() -> None:
    routes = RoutePatterns(["/v1/chat/completions", "/v1/embeddings*"])
    assert routes.allows("/v1/chat/completions") and routes.allows("/v1/embeddings")
    assert not routes.allows("/v1/chat/completions/") and not routes.allows("/v1/models")
    for tricky in ("/v1/chat%2Fcompletions", "/v1/embeddings/../models", "/v1/embeddings//x", "/v1/./chat/completions"):
        assert not routes.allows(tricky)
    assert routes.covers("/v1/embeddings/x") and routes.covers("/v1/embeddings*")
    assert not routes.covers("/v1/*") and not routes.covers("/v1/chat/*")


def record(**fields: object) -> KeyRecord:
    base: dict[str, object] = dict(id="k", key_hash="h", prefix="sk-sira-abcd", name="n", tenant_id="t1",
                                   role="member", created_at=1.0, created_by="master")
    base.update(fields)
    return KeyRecord(**base)  # type: ignore[arg-type]


def test_grants_never_exceed_the_grantor() -> None:
    own = record(role="tenant-admin", allowed_models=["a", "b"], allowed_routes=["/v1/*"],
                 limits=Limits(rpm=10, tpm=1000, max_concurrent=2, budget_usd=5.0, budget_period="weekly"),
                 expires_at=1000.0)
    actor = Actor(id="k", kind="key", role="tenant-admin", home_tenant="t1", key=own)
    fine = record(allowed_models=["a"], allowed_routes=["/v1/chat/completions"],
                  limits=Limits(rpm=5, tpm=100, max_concurrent=1, budget_usd=1.0, budget_period="monthly"),
                  expires_at=500.0)
    check_key_grant(actor, fine)
    wider = {
        "role": record(role="admin"),
        "tenant_id": record(tenant_id="t2"),
        "allowed_models": record(allowed_models=None),
        "limits.rpm": record(allowed_models=["a"], allowed_routes=["/v1/x"], limits=Limits(rpm=11)),
        "limits.budget_period": record(allowed_models=["a"], allowed_routes=["/v1/x"], expires_at=1.0,
                                       limits=Limits(rpm=1, tpm=1, max_concurrent=1, budget_usd=1.0,
                                                     budget_period="daily")),
        "allowed_routes": record(allowed_models=["a"], allowed_routes=["/admin"]),
        "expires_at": record(allowed_models=["a"], allowed_routes=["/v1/x"],
                             limits=Limits(rpm=1, tpm=1, max_concurrent=1, budget_usd=1.0)),
    }
    for param, key in wider.items():
        with pytest.raises(Denied) as denied:
            check_key_grant(actor, key)
        assert denied.value.param == param, param
    master = Actor(id="master", kind="master", role="admin", home_tenant=None)
    check_key_grant(master, record(role="admin", tenant_id="t9"))


def test_bodies_are_validated_strictly() -> None:
    assert decode(b'{"name": "ci"}', KeyCreate).role == "member"
    cases = {
        b'{"name": "ci", "rolee": "admin"}': "rolee",
        b'{"name": "ci\\n"}': "name",
        b'{"name": ""}': "name",
        b'{"name": "ci", "role": "root"}': "role",
        b'{"name": "ci", "allowed_models": ["ok", "no spaces"]}': "allowed_models",
        b'{"name": "ci", "allowed_models": ["a", "a"]}': "allowed_models",
        b'{"name": "ci", "allowed_routes": ["/v1/../admin"]}': "allowed_routes",
        b'{"name": "ci", "limits": {"rpm": 0}}': "limits.rpm",
        b'{"name": "ci", "limits": {"budget_usd": -1}}': "limits.budget_usd",
        b'{"name": "ci", "limits": {"rpm": 1, "burst": 2}}': "limits.burst",
        b'{"name": "ci", "tenant_id": "../x"}': "tenant_id",
        b'{"name": "ci", "metadata": {"k": "' + b"x" * 5000 + b'"}}': "metadata",
        b'{}': "name",
    }
    for body, param in cases.items():
        with pytest.raises(Invalid) as invalid:
            decode(body, KeyCreate)
        assert invalid.value.param == param, body
    with pytest.raises(Invalid) as invalid:
        decode(b"{not json", KeyCreate)
    assert invalid.value.param is None
    update = decode(b'{"allowed_models": null}', KeyUpdate)
    assert update.allowed_models is None and update.name is sira_auth_keys._schema.UNSET


def test_period_bounds() -> None:
    at = datetime(2026, 12, 31, 15, 30, tzinfo=UTC).timestamp()  # a Thursday
    start, end = period_bounds("daily", at)
    assert (datetime.fromtimestamp(start, UTC).day, datetime.fromtimestamp(end, UTC).day) == (31, 1)
    start, end = period_bounds("weekly", at)
    assert datetime.fromtimestamp(start, UTC).strftime("%a %d") == "Mon 28"
    start, end = period_bounds("monthly", at)
    assert end is not None and datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d") == "2027-01-01"
    assert period_bounds("total", at) == (0.0, None)


def test_ledger_reserves_then_reconciles() -> None:
    now = [1_000_000.0]
    ledger = Ledger(clock=lambda: now[0], monotonic=lambda: now[0])
    budget = ledger.budget("team", "t", 1.0, "daily")
    budget.loaded = True
    slot = ledger.counter("principal", "k", 2)
    ledger.admit("r1", (budget,), (slot,), 0.4)
    ledger.admit("r2", (budget,), (slot,), 0.4)
    assert (budget.reserved, slot.running) == (pytest.approx(0.8), 2)
    with pytest.raises(ConcurrencyLimited):
        ledger.admit("r3", (budget,), (slot,), 0.1)
    ledger.settle("r1", 0.1, [("team", "t")], now[0])
    assert (budget.spent, budget.reserved, slot.running) == (pytest.approx(0.1), pytest.approx(0.4), 1)
    with pytest.raises(BudgetExceeded) as exceeded:
        ledger.admit("r3", (budget,), (slot,), 0.6)
    assert "team 't'" in exceeded.value.message and "resets at" in exceeded.value.message
    assert exceeded.value.status == 429 and exceeded.value.retry_after == 1  # in-flight room: soon
    ledger.settle("r2", 0.9, [("team", "t")], now[0])
    with pytest.raises(BudgetExceeded) as spent:
        ledger.admit("r4", (budget,), (slot,), 0.0)
    assert spent.value.retry_after is not None and spent.value.retry_after > 3600
    now[0] += 86_400  # the next day: a new period
    ledger.admit("r4", (budget,), (slot,), 0.5)
    assert budget.spent == 0.0
    now[0] += 10_000
    assert ledger.expire_holds(older_than=60) == 1 and budget.reserved == 0.0 and slot.running == 0
