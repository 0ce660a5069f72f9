"""Budget and rate-limit races: 50 requests at once must not spend past the limit.

The gateway runs ``provider-mock`` (its usage is deterministic: words of the prompt, tokens of the
reply) and ``pricing`` (a fixed price for ``mock-1``), so each request's cost is known. 50 requests
whose usage would sum to five times a key's USD budget (then to five times its tokens-per-minute
limit) are sent concurrently and held open by the mock's pacing, so a check-then-spend gateway
would admit all of them. What the ledger stored afterwards (the ``usage_records`` table) may
exceed the limit by at most one request's reservation.

That bound holds because a request cannot cost more than its reservation: the kernel caps a
budgeted key's output at the ``estimate_completion_tokens`` the reservation assumed, and the
prompt estimate (``Content-Length / 4``) is an upper bound on the prompt.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import httpx
import pytest

CONCURRENT = 50
COMPLETION = 10
CONTENT = f"[mock:tokens={COMPLETION}] " + "word " * 50
ESTIMATED_COMPLETION = 16  # estimate_completion_tokens in the suite's auth-keys section


def body(content: str = CONTENT, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-1", "messages": [{"role": "user", "content": content}], **extra}


def cost_of(content: str, completion: int) -> float:
    """What mock-1 charges (sec.PRICES): 0.001 USD a prompt word, 0.002 a completion token."""
    return len(content.split()) * 0.001 + completion * 0.002


def budget_reservation(payload: dict[str, Any]) -> float:
    """What auth-keys reserves for a request: Content-Length / 4 prompt tokens, plus the estimated completion."""
    size = len(httpx.Request("POST", "http://x", json=payload).content)
    return math.ceil(size / 4) * 0.001 + ESTIMATED_COMPLETION * 0.002


def race(gateway: Any, key: str, payload: dict[str, Any]) -> tuple[list[httpx.Response], float]:
    responses: list[httpx.Response] = []

    async def run() -> None:
        limits = httpx.Limits(max_connections=CONCURRENT)
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30, limits=limits) as client:

            async def one() -> None:
                responses.append(await client.post("/v1/chat/completions", json=payload,
                                                   headers={"authorization": f"Bearer {key}"}))

            async with anyio.create_task_group() as tg:
                for _ in range(CONCURRENT):
                    tg.start_soon(one)

    began = time.monotonic()
    anyio.run(run)
    return responses, time.monotonic() - began


@pytest.fixture(scope="module")
def racing(tmp_path_factory: pytest.TempPathFactory, sec: Any) -> Any:
    tmp = tmp_path_factory.mktemp("race")
    config = sec.base_config(
        tmp, plugins=("api-openai", "provider-mock", "pricing", "storage-sqlite", "auth-keys", "ledger"),
        limits={"queue_timeout": 0.05},
        sections={"provider-mock": {"pace_ms": 40}},  # ~0.4 s a request: all 50 overlap
    )
    with sec.serving(config) as gateway:
        yield gateway


def stored(gateway: Any, principal: str, expected: int = CONCURRENT, timeout: float = 5.0) -> tuple[int, float, int]:
    """(requests answered 200, cost, tokens) of ``principal`` in the ledger, once ``expected`` records are."""
    deadline = time.monotonic() + timeout
    while True:
        [(count, cost, tokens, ok)] = gateway.rows(
            "SELECT COUNT(*), TOTAL(cost_usd), TOTAL(total_tokens), TOTAL(status = 200)"
            " FROM usage_records WHERE principal = ?", principal)
        if count >= expected:
            return int(ok), float(cost), int(tokens)
        assert time.monotonic() < deadline, f"the ledger stored {count} of {expected} records"
        time.sleep(0.05)


def test_a_usd_budget_admits_at_most_the_budget_plus_one_reservation(racing: Any) -> None:
    actual = cost_of(CONTENT, COMPLETION)
    budget = CONCURRENT * actual / 5
    key, record = racing.key(racing.tenant("racers"), limits={"budget_usd": budget, "budget_period": "total"})
    reservation = budget_reservation(body())

    responses, _ = race(racing, key, body())

    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert admitted and refused
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    assert all("retry-after" in r.headers for r in refused)
    assert {(r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"]) for r in admitted} == {
        (len(CONTENT.split()), COMPLETION)}
    ok, cost, _ = stored(racing, record["id"])
    assert ok == len(admitted)
    assert cost == pytest.approx(len(admitted) * actual)
    assert cost <= budget + reservation, (len(admitted), cost, budget, reservation)
    assert len(admitted) < CONCURRENT / 2
    # once the race settled, requests one at a time use what is left, and no more
    sent = CONCURRENT
    for _ in range(20):
        sent += 1
        answer = racing.chat(key, CONTENT)
        if answer.status_code == 429:
            break
        assert answer.status_code == 200, answer.text
        stored(racing, record["id"], expected=sent)  # settled before the next one
    else:
        pytest.fail("the budget never ran out")
    _, cost, _ = stored(racing, record["id"], expected=sent)
    assert budget - reservation <= cost <= budget + reservation, (cost, budget, reservation)


def test_a_tokens_per_minute_limit_admits_at_most_the_limit_plus_one_reservation(racing: Any) -> None:
    actual = len(CONTENT.split()) + COMPLETION
    tpm = CONCURRENT * actual // 5
    key, record = racing.key(racing.tenant("token-racers"), limits={"tpm": tpm})
    payload = body(max_tokens=COMPLETION)
    reservation = math.ceil(len(CONTENT) / 4) + 4 + COMPLETION  # the kernel's estimate + max_tokens

    responses, elapsed = race(racing, key, payload)

    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert admitted and refused
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"rate_limit_exceeded"}
    assert all("retry-after" in r.headers for r in refused)
    ok, _, tokens = stored(racing, record["id"])
    assert ok == len(admitted)
    refill = tpm / 60 * elapsed  # what the bucket earned back while the race ran
    assert tokens <= tpm + reservation + refill, (len(admitted), tokens, tpm, reservation, refill)
    assert len(admitted) < CONCURRENT / 2


LONG = 200  # completion tokens: far more than the 16 auth-keys reserves for
LONG_CONTENT = f"[mock:tokens={LONG}] [mock:pace_ms=1] " + "word " * 50


def test_a_budgeted_keys_output_is_capped_at_its_reservation(racing: Any) -> None:
    # What makes the bound below hold: the kernel lowers max_tokens of a budgeted key's requests to
    # the output the budget reserved (estimate_completion_tokens), whatever the client asked for.
    key, _ = racing.key(racing.tenant("capped"), limits={"budget_usd": 1000.0, "budget_period": "total"})
    for extra in ({}, {"max_tokens": 500}, {"max_completion_tokens": 500}):
        response = httpx.post(f"{racing.base_url}/v1/chat/completions", json=body(LONG_CONTENT, **extra),
                              headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["usage"]["completion_tokens"] == ESTIMATED_COMPLETION
        assert answer["choices"][0]["finish_reason"] == "length"
    unbudgeted, _ = racing.key(racing.tenant("uncapped"), limits={})
    response = httpx.post(f"{racing.base_url}/v1/chat/completions", json=body(LONG_CONTENT),
                          headers={"authorization": f"Bearer {unbudgeted}"}, timeout=30)
    assert response.json()["usage"]["completion_tokens"] == LONG


def test_an_underestimated_race_admits_at_most_the_budget_plus_one_reservation(racing: Any) -> None:
    # Each request asks for far more output than the reservation assumes; the kernel caps budgeted
    # keys' output at the reservation (Principal.max_output_tokens), so the estimate is a bound.
    budget = CONCURRENT * cost_of(LONG_CONTENT, LONG) / 5
    key, record = racing.key(racing.tenant("long-racers"), limits={"budget_usd": budget, "budget_period": "total"})
    race(racing, key, body(LONG_CONTENT))
    _, cost, _ = stored(racing, record["id"])
    assert cost <= budget + budget_reservation(body(LONG_CONTENT)), (cost, budget)
