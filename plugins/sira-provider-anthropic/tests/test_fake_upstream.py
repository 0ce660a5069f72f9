"""FakeAnthropicUpstream's own surface, as other plugins' tests (an Anthropic inbound surface) see it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream, Fault, fixture_names, load_fixture

from .conftest import API_KEY

HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture
def client(fake: FakeAnthropicUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, headers=HEADERS) as http:
        yield http


def messages(text: str = "hi there", **fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **fields,
    }


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["type"] == "error" and body["request_id"] == response.headers["request-id"]
    return response.status_code, body["error"]["type"], body["error"]["message"]


def test_count_tokens(client: httpx.Client) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "system": "be brief",
        "messages": [{"role": "user", "content": "one two three"}],
        "tools": [{"name": "get_weather", "description": "the weather", "input_schema": {}}],
    }
    response = client.post("/v1/messages/count_tokens", json=body)
    assert response.status_code == 200
    assert response.json() == {"input_tokens": 2 + 3 + 3}  # system, message, tool name + description
    reply = client.post("/v1/messages", json={**body, "max_tokens": 10}).json()
    assert reply["usage"]["input_tokens"] == 8  # the same count the Messages endpoint reports


def test_models(client: httpx.Client, fake: FakeAnthropicUpstream) -> None:
    listed = client.get("/v1/models").json()
    assert [m["id"] for m in listed["data"]] == list(fake.models)
    assert listed["has_more"] is False and listed["first_id"] == fake.models[0]


def test_authentication_and_version(fake: FakeAnthropicUpstream) -> None:
    with httpx.Client(base_url=fake.base_url) as http:
        missing_key = http.post("/v1/messages", json=messages(), headers={"anthropic-version": "2023-06-01"})
        missing_version = http.post("/v1/messages", json=messages(), headers={"x-api-key": API_KEY})
    assert error_of(missing_key)[:2] == (401, "authentication_error")
    assert error_of(missing_version) == (
        400,
        "invalid_request_error",
        "anthropic-version: header is required",
    )


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (messages(n=2), "n: Extra inputs are not permitted"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens: Field required"),
        (messages(temperature=1.5), "temperature"),
        (
            messages(thinking={"type": "enabled", "budget_tokens": 2048}),
            "greater than `thinking.budget_tokens`",
        ),
        ({**messages(), "messages": [{"role": "system", "content": "x"}]}, "Unexpected role 'system'"),
        (
            {**messages(), "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "alternate",
        ),
        (
            {**messages(), "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "non-empty",
        ),
        (
            {
                **messages(),
                "messages": [
                    {"role": "user", "content": "a"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                    },
                    {"role": "user", "content": "b"},
                ],
            },
            "without `tool_result` blocks immediately after: t1",
        ),
        (
            {
                **messages(),
                "messages": [
                    {"role": "user", "content": "a"},
                    {
                        "role": "assistant",
                        "content": [{"type": "thinking", "thinking": "x", "signature": "forged"}],
                    },
                    {"role": "user", "content": "b"},
                ],
            },
            "Invalid `signature`",
        ),
    ],
)
def test_requests_are_checked_like_the_real_api(
    client: httpx.Client, body: dict[str, Any], complaint: str
) -> None:
    status, error_type, message = error_of(client.post("/v1/messages", json=body))
    assert (status, error_type) == (400, "invalid_request_error")
    assert complaint in message


def test_faults_speak_anthropic(client: httpx.Client, fake: FakeAnthropicUpstream) -> None:
    fake.enqueue(
        Fault(status=529, retry_after=3),
        Fault(status=429, message="slow down"),
        Fault(status=400, error_type="not_found_error"),
    )
    overloaded = client.post("/v1/messages", json=messages())
    assert error_of(overloaded) == (529, "overloaded_error", "Overloaded")
    assert overloaded.headers["retry-after"] == "3"
    assert error_of(client.post("/v1/messages", json=messages())) == (429, "rate_limit_error", "slow down")
    assert error_of(client.post("/v1/messages", json=messages()))[:2] == (400, "not_found_error")


def test_replay_is_byte_for_byte(client: httpx.Client, fake: FakeAnthropicUpstream) -> None:
    for name in fixture_names():
        fake.replay(name)
        response = client.post("/v1/messages", json={})  # a replay answers whatever was asked
        exchange = load_fixture(name)
        if exchange.stream is not None:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.content == exchange.stream
        else:
            assert response.json() == exchange.response


def test_prompt_cache_simulation(client: httpx.Client, fake: FakeAnthropicUpstream) -> None:
    system = [{"type": "text", "text": "a b c d", "cache_control": {"type": "ephemeral"}}]
    usages = [
        client.post("/v1/messages", json=messages("q", system=system)).json()["usage"] for _ in range(2)
    ]
    assert [
        (u["input_tokens"], u["cache_creation_input_tokens"], u["cache_read_input_tokens"]) for u in usages
    ] == [
        (1, 4, 0),
        (1, 0, 4),
    ]
    fake.reset()  # forgets the cache too
    usage = client.post("/v1/messages", json=messages("q", system=system)).json()["usage"]
    assert usage["cache_creation_input_tokens"] == 4
