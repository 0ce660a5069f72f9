"""End to end through the router: the ``openai`` SDK → Sira (real HTTP) → two fake OpenAI upstreams.

Two ``provider-openai`` instances (``openai-a``, ``openai-b``, each ``use = "provider-openai"``) talk
to two ``FakeOpenAIUpstream`` servers; the ``router`` plugin groups them. Faults are injected on
``a``; the client (``max_retries=0``, so every retry seen here is the gateway's) must get the
fallback's answer where a fallback exists and a clear error where none does, with exactly one usage
record per request listing every attempt, and no retry once a stream has started.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from sira_kernel import RequestInfo, UsageRecord
from sira_kernel.bus import Subscription
from sira_kernel.testing import ServerThread, make_kernel
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault

MASTER = "sk-test-master-router-0123456789"
UPSTREAM_KEY = "sk-upstream-router-0123456789"
FIRST_TOKEN_TIMEOUT = 0.6
CONTEXT_ERROR = "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000."


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]]:
    with FakeOpenAIUpstream() as a, FakeOpenAIUpstream() as b:
        yield a, b


def _provider(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {"use": "provider-openai", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY,
            "models": ["gpt-4o-mini", "gpt-4o"], "embedding_models": ["text-embedding-3-small"]}


def _config(a: FakeOpenAIUpstream, b: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "kernel": {"plugins": ["api-openai", "openai-a", "openai-b", "router"], "stop_timeout": 2.0},
        "server": {"master_key": MASTER},
        "limits": {"first_token_timeout": FIRST_TOKEN_TIMEOUT, "total_timeout": 8.0, "connect_timeout": 1.0},
        "plugins": {
            "openai-a": _provider(a),
            "openai-b": _provider(b),
            "router": {
                "retries": 0,
                "backoff_base": 0.01,
                "max_retry_after": 2.0,
                # Breakers are exercised in-process; here they must not carry state between tests.
                "breaker": {"consecutive_failures": 1000, "min_requests": 1000},
                "groups": {
                    "chat": {
                        "deployments": [{"provider": "openai-a", "model": "gpt-4o-mini"}],
                        "fallbacks": ["backup"],
                        "fallbacks_on": {"context_window": ["long"]},
                        "aliases": ["chat-latest"],
                    },
                    "vectors": {"deployments": [{"provider": "openai-a", "model": "text-embedding-3-small"}]},
                    "backup": {"deployments": [{"provider": "openai-b", "model": "gpt-4o-mini"}]},
                    "long": {"deployments": [{"provider": "openai-b", "model": "gpt-4o"}]},
                    "solo": {"deployments": [{"provider": "openai-a", "model": "gpt-4o"}]},
                    "patient": {"deployments": [{"provider": "openai-a", "model": "gpt-4o"}], "retries": 2},
                },
            },
        },
    }


class UsageLog:
    """Every UsageRecord the kernel publishes (a real bus subscription)."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.lock = threading.Lock()

    def __call__(self, record: UsageRecord) -> None:
        with self.lock:
            self.records.append(record)

    def take(self, count: int) -> list[UsageRecord]:
        got: list[UsageRecord] = []
        for _ in range(300):
            with self.lock:
                got += self.records
                self.records = []
            if len(got) >= count:
                break
            time.sleep(0.01)
        time.sleep(0.05)  # anything extra would show up now
        with self.lock:
            got += self.records
            self.records = []
        return got


@pytest.fixture(scope="module")
def gateway(upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]) -> Iterator[ServerThread]:
    a, b = upstreams
    with ServerThread(lambda: make_kernel(config=_config(a, b))) as server:
        usage = UsageLog()
        subscription = Subscription("test-usage", "usage.request", usage)

        async def subscribe() -> None:
            server.kernel.bus.add(subscription)
            server.kernel.task_group.start_soon(subscription.run)

        server.call(subscribe)
        server.usage = usage  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def admin(gateway: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{gateway.admin_url}/api/v1", headers={"authorization": f"Bearer {MASTER}"},
                      timeout=10) as client:
        yield client


@pytest.fixture
def client(gateway: ServerThread, upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream],
           admin: httpx.Client) -> Iterator[openai.OpenAI]:
    for upstream in upstreams:
        upstream.reset()
    assert admin.post("/route/breakers/reset").status_code == 200  # a 429's cooldown must not leak
    gateway.usage.take(0)  # type: ignore[attr-defined]
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=MASTER, max_retries=0, timeout=20) as c:
        yield c
    _assert_nothing_held(gateway)


def _assert_nothing_held(gateway: ServerThread) -> None:
    async def state() -> tuple[int, int, dict[str, int]]:
        kernel = gateway.kernel
        leases = {h.id: h.leases for h in kernel.plugins.handles.values()}
        return kernel.scheduler.pools["requests"].in_use, kernel.scheduler.outstanding, leases

    for _ in range(100):
        in_use, outstanding, leases = gateway.call(state)
        if in_use == 0 and outstanding == 0 and not any(leases.values()):
            return
        time.sleep(0.02)
    raise AssertionError(f"capacity held after the test: in_use={in_use} outstanding={outstanding} {leases}")


def _one_record(gateway: ServerThread) -> UsageRecord:
    records = gateway.usage.take(1)  # type: ignore[attr-defined]
    assert len(records) == 1, records
    return records[0]


def _attempts(record: UsageRecord) -> list[tuple[str, int]]:
    return [(a.provider, a.status) for a in record.attempt_log]


ASK = [{"role": "user", "content": "Hello router"}]

FAULTS = {
    "429": Fault(status=429, retry_after=3),
    "500": Fault(status=500),
    "503": Fault(status=503),
    "reset": Fault(reset=True),
    "hang": Fault(hang=True),
}
EXPECTED_STATUS = {"429": 429, "500": 502, "503": 502, "reset": 502, "hang": 504}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fallback_answers_non_stream(fault: str, client: openai.OpenAI, gateway: ServerThread,
                                     upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]) -> None:
    a, b = upstreams
    a.enqueue(FAULTS[fault])
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=ASK)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == "Echo: Hello router"
    assert raw.headers["x-sira-route"] == "openai-b/gpt-4o-mini; attempts=2"
    assert len(a.requests) == 1 and len(b.requests) == 1
    record = _one_record(gateway)
    assert record.status == 200 and record.attempts == 2
    assert _attempts(record) == [("openai-a", EXPECTED_STATUS[fault]), ("openai-b", 200)]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fallback_answers_stream_before_first_byte(
    fault: str, client: openai.OpenAI, gateway: ServerThread,
    upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream],
) -> None:
    a, b = upstreams
    a.enqueue(FAULTS[fault])
    with client.chat.completions.with_streaming_response.create(
        model="chat", messages=ASK, stream=True  # type: ignore[arg-type]
    ) as response:
        assert response.headers["x-sira-route"] == "openai-b/gpt-4o-mini; attempts=2"
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "Echo: Hello router"
    record = _one_record(gateway)
    assert record.stream and record.status == 200
    assert _attempts(record) == [("openai-a", EXPECTED_STATUS[fault]), ("openai-b", 200)]


def test_slow_first_token_fails_over_within_the_ttft_timeout(
    client: openai.OpenAI, gateway: ServerThread, upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]
) -> None:
    a, b = upstreams
    a.enqueue(Fault(first_token_delay=5.0))
    started = time.monotonic()
    stream = client.chat.completions.create(model="chat", messages=ASK, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Echo: Hello router"
    assert time.monotonic() - started < FIRST_TOKEN_TIMEOUT + 2.0  # not the upstream's 5 s
    record = _one_record(gateway)
    assert _attempts(record) == [("openai-a", 504), ("openai-b", 200)]
    assert record.attempt_log[0].error_code == "upstream_timeout"


def test_mid_stream_drop_is_not_retried(
    client: openai.OpenAI, gateway: ServerThread, upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]
) -> None:
    a, b = upstreams
    a.enqueue(Fault(drop_after=2))
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "one two three four five"}], stream=True
    )
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert received and received != "Echo: one two three four five"  # the start arrived, then the error
    assert b.requests == []  # bytes had reached the client: no failover
    record = _one_record(gateway)
    assert record.stream and record.status == 502 and record.attempts == 1
    assert _attempts(record) == [("openai-a", 502)]


def test_no_fallback_gives_a_clear_error(
    client: openai.OpenAI, gateway: ServerThread, upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]
) -> None:
    a, b = upstreams
    a.enqueue(Fault(status=500))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="solo", messages=ASK)  # type: ignore[arg-type]
    assert caught.value.status_code == 502
    assert "upstream answered 500" in caught.value.message
    assert len(a.requests) == 1 and b.requests == []
    record = _one_record(gateway)
    assert record.status == 502 and _attempts(record) == [("openai-a", 502)]


def test_retry_in_group_waits_for_retry_after(
    client: openai.OpenAI, gateway: ServerThread, upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]
) -> None:
    a, _ = upstreams
    a.enqueue(Fault(status=429, retry_after=0.5))
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="patient", messages=ASK)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert raw.headers["x-sira-route"] == "openai-a/gpt-4o; attempts=2"
    assert elapsed >= 0.5  # never sooner than the upstream asked
    record = _one_record(gateway)
    assert _attempts(record) == [("openai-a", 429), ("openai-a", 200)]


def test_retry_after_longer_than_allowed_is_not_waited_for(
    client: openai.OpenAI, gateway: ServerThread, upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]
) -> None:
    a, _ = upstreams
    a.enqueue(Fault(status=429, retry_after=30))
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="patient", messages=ASK)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.0
    assert caught.value.response.headers["retry-after"] == "30"
    record = _one_record(gateway)
    assert _attempts(record) == [("openai-a", 429)]


def test_5xx_is_retried_with_backoff_in_the_group(
    client: openai.OpenAI, gateway: ServerThread, upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]
) -> None:
    a, _ = upstreams
    a.enqueue(Fault(status=503), Fault(status=500))
    raw = client.chat.completions.with_raw_response.create(model="patient", messages=ASK)  # type: ignore[arg-type]
    assert raw.headers["x-sira-route"] == "openai-a/gpt-4o; attempts=3"
    record = _one_record(gateway)
    assert _attempts(record) == [("openai-a", 502), ("openai-a", 502), ("openai-a", 200)]


def test_context_window_error_falls_back_to_a_larger_group(
    client: openai.OpenAI, gateway: ServerThread, upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]
) -> None:
    a, b = upstreams
    a.enqueue(Fault(status=400, message=CONTEXT_ERROR))
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=ASK)  # type: ignore[arg-type]
    assert raw.headers["x-sira-route"] == "openai-b/gpt-4o; attempts=2"
    assert b.requests[-1].json["model"] == "gpt-4o"
    record = _one_record(gateway)
    assert _attempts(record) == [("openai-a", 400), ("openai-b", 200)]


def test_a_rejected_request_is_not_retried(
    client: openai.OpenAI, gateway: ServerThread, upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream]
) -> None:
    a, b = upstreams
    a.enqueue(Fault(status=400, message="'temperature' must be at most 2"))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=ASK)  # type: ignore[arg-type]
    assert len(a.requests) == 1 and b.requests == []
    assert _attempts(_one_record(gateway)) == [("openai-a", 400)]


def test_decision_log_and_breakers_over_http(
    client: openai.OpenAI, gateway: ServerThread, admin: httpx.Client,
    upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream],
) -> None:
    a, _ = upstreams
    a.enqueue(Fault(status=429, retry_after=3))
    client.chat.completions.create(model="chat", messages=ASK)  # type: ignore[arg-type]
    gateway.usage.take(1)  # type: ignore[attr-defined]
    [decision] = admin.get("/route/decision-log", params={"limit": 1}).json()["decisions"]
    assert decision["model"] == "chat" and decision["group"] == "chat" and decision["outcome"] == "ok"
    assert decision["fallbacks"] == ["backup"]
    assert [(x["deployment"], x["why"], x.get("error")) for x in decision["attempts"]] == [
        ("openai-a/gpt-4o-mini", "first", "rate_limit"), ("openai-b/gpt-4o-mini", "fallback:rate_limit", None),
    ]
    assert decision["request_id"].startswith("req-")
    breakers = {b["deployment"]: b for b in admin.get("/route/breakers").json()["breakers"]}
    assert breakers["openai-a/gpt-4o-mini"]["state"] == "open"  # cooling down for the Retry-After
    assert 0 < breakers["openai-a/gpt-4o-mini"]["retry_in_s"] <= 3
    # While it cools down, requests go straight to the fallback, without an attempt on it.
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=ASK)  # type: ignore[arg-type]
    assert raw.headers["x-sira-route"] == "openai-b/gpt-4o-mini; attempts=1"
    gateway.usage.take(1)  # type: ignore[attr-defined]
    [decision] = admin.get("/route/decision-log", params={"limit": 1}).json()["decisions"]
    assert decision["skipped"] and decision["skipped"][0].startswith("openai-a/gpt-4o-mini: open")
    health = httpx.get(f"{gateway.base_url}/health").json()
    [router] = [s for s in health["services"] if s["interface"] == "RouterState"]
    assert router["healthy"] is True and router["owner"] == "router"


def test_admin_api_is_on_the_admin_listener_and_needs_the_master_key(gateway: ServerThread) -> None:
    url = f"{gateway.admin_url}/api/v1/route/decision-log"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer sk-wrong-key-0123456789"}).status_code == 401
    assert httpx.get(url, headers={"authorization": f"Bearer {MASTER}"}).status_code == 200
    public = f"{gateway.base_url}/api/v1/route/decision-log"
    assert httpx.get(public, headers={"authorization": f"Bearer {MASTER}"}).status_code == 404


def test_rules_through_the_admin_api_route_requests(
    client: openai.OpenAI, gateway: ServerThread, admin: httpx.Client,
    upstreams: tuple[FakeOpenAIUpstream, FakeOpenAIUpstream],
) -> None:
    a, b = upstreams
    rule = {"name": "vip", "target": "backup", "priority": 5,
            "when": {"models": ["chat"], "headers": {"x-customer": "vip-*"}}}
    assert admin.post("/rules", json=rule).status_code == 201
    try:
        assert admin.post("/rules", json=rule).status_code == 409
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=ASK, extra_headers={"x-customer": "vip-42"}  # type: ignore[arg-type]
        )
        assert raw.headers["x-sira-route"] == "openai-b/gpt-4o-mini; attempts=1"
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=ASK)  # type: ignore[arg-type]
        assert raw.headers["x-sira-route"] == "openai-a/gpt-4o-mini; attempts=1"
        gateway.usage.take(2)  # type: ignore[attr-defined]
        dry = admin.post("/rules/test", json={"model": "chat", "messages": ASK, "headers": {"x-customer": "vip-1"}})
        assert dry.status_code == 200 and dry.json()["rule"] == "vip" and dry.json()["group"] == "backup"
    finally:
        assert admin.delete("/rules/vip").status_code == 204
    assert admin.get("/rules/vip").status_code == 404


def test_the_model_list_shows_groups_and_their_aliases(gateway: ServerThread, client: openai.OpenAI) -> None:
    listed = {model.id for model in client.models.list()}
    assert {"chat", "chat-latest", "backup", "long", "solo", "patient", "vectors"} <= listed
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"} <= listed  # and what providers serve
    assert client.models.retrieve("chat-latest").id == "chat-latest"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-group")

    async def kinds() -> dict[str, str]:
        info = RequestInfo(method="GET", path="/v1/models", headers={"authorization": f"Bearer {MASTER}"})
        return {model.id: model.kind for model in await gateway.kernel.pipeline.models(info)}

    listed_kinds = gateway.call(kinds)
    assert listed_kinds["vectors"] == "embedding" and listed_kinds["chat"] == "chat"
    embedded = client.embeddings.create(model="vectors", input="hello")  # and the listed name works
    assert len(embedded.data) == 1
