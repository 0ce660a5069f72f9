"""End to end: the official ``openai`` SDK → Sira (real HTTP server) → a fake OpenAI-format upstream.

Sira runs the installed ``api-openai`` and ``provider-openai`` plugins from their entry points,
exactly as ``sira serve`` would, in a background thread; the upstream is a real aiohttp server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from sira_kernel.testing import ServerThread, make_kernel
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault, chunk_event, error_event
from sira_kernel.testing.gateway import (
    MASTER_KEY,
    UPSTREAM_KEY,
    UsageLog,
    assert_nothing_held,
    gateway_config,
    http_chunks,
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(upstream: FakeOpenAIUpstream) -> Iterator[ServerThread]:
    config = gateway_config(upstream, embedding_models=["text-embedding-3-small"], limits={"max_n": 4})
    with ServerThread(lambda: make_kernel(config=config)) as server:
        yield server


@pytest.fixture(scope="module")
def usage(gateway: ServerThread) -> UsageLog:
    return UsageLog.subscribe(gateway)


@pytest.fixture
def client(gateway: ServerThread, upstream: FakeOpenAIUpstream, usage: UsageLog) -> Iterator[openai.OpenAI]:
    upstream.reset()
    usage.take()
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=20) as c:
        yield c
    assert_nothing_held(gateway)


# -- happy paths -------------------------------------------------------------------------------------


def test_chat_non_stream(client: openai.OpenAI, upstream: FakeOpenAIUpstream, usage: UsageLog) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello gateway"}], seed=7, stop=["zzz"]
    )
    assert raw.headers["x-sira-route"] == "provider-openai/gpt-4o-mini; attempts=1"
    assert raw.headers["x-request-id"].startswith("req-")
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo: Hello gateway"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 2
    sent = upstream.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.json["model"] == "gpt-4o-mini" and sent.json["seed"] == 7 and sent.json["stop"] == ["zzz"]
    [record] = usage.wait(1)
    assert (record.status, record.provider, record.principal_kind) == (200, "provider-openai", "master")
    assert record.total_tokens == completion.usage.total_tokens


def test_stream_arrives_chunk_by_chunk(client: openai.OpenAI, upstream: FakeOpenAIUpstream, usage: UsageLog) -> None:
    words = " ".join(f"w{i}" for i in range(12))
    upstream.enqueue(Fault(chunk_delay=0.05))
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": words}], stream=True,
        stream_options={"include_usage": True},
    )
    text, first_seen_while_upstream_open, reported = "", None, None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first_seen_while_upstream_open is None:
            first_seen_while_upstream_open = upstream.open_streams == 1
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            reported = chunk.usage
    assert text == f"Echo: {words}"
    assert first_seen_while_upstream_open is True  # relayed as it arrived, not buffered
    assert reported is not None and reported.completion_tokens == 13
    [record] = usage.wait(1)
    assert record.stream and record.status == 200 and record.completion_tokens == 13
    assert record.ttft_ms is not None


def test_events_that_arrive_together_go_out_in_one_write(gateway: ServerThread, upstream: FakeOpenAIUpstream,
                                                        usage: UsageLog) -> None:
    upstream.reset()
    usage.take()
    words = " ".join(f"w{i}" for i in range(10))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words}], "stream": True,
            "stream_options": {"include_usage": True}}
    upstream.enqueue(Fault(together=True))  # the whole answer in one upstream write
    chunks = http_chunks(gateway.base_url, "/v1/chat/completions", body)
    # one body message with every event (role, 11 deltas, finish, usage), then [DONE]: not one per event
    assert len(chunks) == 2, [c[:60] for c in chunks]
    events = [json.loads(line[6:]) for line in chunks[0].split(b"\n\n") if line]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == f"Echo: {words}"
    assert events[-1]["usage"]["completion_tokens"] == 11
    assert chunks[1] == b"data: [DONE]\n\n"
    [record] = usage.wait(1)
    assert record.status == 200 and record.completion_tokens == 11

    # events arriving apart still go out as they arrive: one write each
    upstream.enqueue(Fault(chunk_delay=0.02))
    assert len(http_chunks(gateway.base_url, "/v1/chat/completions", body)) >= 12
    usage.wait(1)
    assert_nothing_held(gateway)


def test_error_in_the_same_read_as_content_still_reaches_the_sdk(client: openai.OpenAI, upstream: FakeOpenAIUpstream,
                                                                 usage: UsageLog) -> None:
    upstream.enqueue(Fault(body=chunk_event({"role": "assistant", "content": ""}) + chunk_event({"content": "Hel"})
                           + chunk_event({"content": "lo"}) + error_event("the model crashed", code="boom")))
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError, match="the model crashed"):
        for c in stream:
            text += c.choices[0].delta.content or ""
    assert text == "Hello"  # what came before the error in the same read was relayed first
    [record] = usage.wait(1)
    assert record.status >= 500 and record.error_code is not None


def test_stream_without_include_usage_sends_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    ))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}},
]


def test_tool_calls_non_stream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS  # type: ignore[arg-type]
    )
    calls = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert calls is not None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("get_weather", {"location": "Paris"}), ("get_time", {"location": "Tokyo"})
    ]


def test_tool_calls_streamed_arrive_complete_and_in_order(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS,  # type: ignore[arg-type]
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        ("get_weather", {"location": "Paris"}), ("get_time", {"location": "Tokyo"})
    ]
    assert all(c["id"] for c in calls.values())


def test_multimodal_parts_response_format_and_n(client: openai.OpenAI, upstream: FakeOpenAIUpstream) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", n=2, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}],
    )
    assert len(completion.choices) == 2
    sent = upstream.requests[-1].json
    assert sent["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png")
    assert sent["response_format"] == {"type": "json_object"} and sent["n"] == 2


def test_unknown_fields_pass_through_but_cannot_redirect(client: openai.OpenAI,
                                                          upstream: FakeOpenAIUpstream) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_body={"custom_knob": {"a": 1}, "base_url": "http://127.0.0.2:1/", "api_key": "sk-evil-key-123456",
                    "model_url": "http://127.0.0.2:1/"},
        extra_headers={"x-upstream-url": "http://127.0.0.2:1/", "api-key": "sk-evil-key-123456"},
    )
    sent = upstream.requests[-1]
    assert sent.json["custom_knob"] == {"a": 1}
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "api-key" not in sent.headers and "x-upstream-url" not in sent.headers


def test_embeddings_and_models(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert [d.index for d in result.data] == [0, 1] and len(result.data[0].embedding) > 0
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"} <= ids
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# -- errors --------------------------------------------------------------------------------------------


def test_auth_errors(gateway: ServerThread, client: openai.OpenAI, usage: UsageLog) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="sk-wrong-key-000000", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model="gpt-4o-mini", messages=msgs)  # type: ignore[arg-type]
        assert err.value.status_code == 401 and MASTER_KEY not in str(err.value.body)
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": msgs})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{gateway.base_url}/v1/models").status_code == 401
    records = usage.wait(2)  # listing models is not usage: only the two chat calls are recorded
    assert [(r.status, r.principal_kind) for r in records] == [(401, "unknown"), (401, "unknown")]


@pytest.mark.parametrize(
    ("fault", "exception", "status"),
    [
        (Fault(status=429, retry_after=7), openai.RateLimitError, 429),
        (Fault(status=500), openai.InternalServerError, 502),
        (Fault(status=503), openai.InternalServerError, 502),
        (Fault(status=400), openai.BadRequestError, 400),
        (Fault(status=401), openai.InternalServerError, 502),
        (Fault(reset=True), openai.InternalServerError, 502),
        (Fault(body=b"{not json"), openai.InternalServerError, 502),
        (Fault(hang=True), openai.InternalServerError, 504),
    ],
    ids=["429", "500", "503", "400", "upstream-401", "reset", "invalid-json", "hang"],
)
def test_upstream_failures_map_to_sdk_errors(
    client: openai.OpenAI, upstream: FakeOpenAIUpstream, usage: UsageLog, fault: Fault,
    exception: type[Exception], status: int,
) -> None:
    upstream.enqueue(fault)
    with pytest.raises(exception) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == status  # type: ignore[attr-defined]
    body = err.value.body  # type: ignore[attr-defined]
    assert set(body) >= {"message", "type", "code"}
    assert UPSTREAM_KEY not in json.dumps(body)
    if status == 429:
        assert err.value.response.headers["retry-after"] == "7"  # type: ignore[attr-defined]
    [record] = usage.wait(1)
    assert record.status == status


def test_upstream_error_before_stream_start_is_an_http_error(client: openai.OpenAI,
                                                             upstream: FakeOpenAIUpstream) -> None:
    upstream.enqueue(Fault(status=503))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)


def test_mid_stream_drop_raises_api_error(client: openai.OpenAI, upstream: FakeOpenAIUpstream,
                                          usage: UsageLog) -> None:
    upstream.enqueue(Fault(drop_after=3))
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three four five six"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk)
    assert received  # some chunks made it before the error, then the error was not swallowed
    [record] = usage.wait(1)
    assert record.status >= 500 and record.stream


def test_first_token_timeout_on_stream(client: openai.OpenAI, upstream: FakeOpenAIUpstream) -> None:
    upstream.enqueue(Fault(first_token_delay=4.0))
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        ))


def test_client_disconnect_mid_stream_closes_upstream(gateway: ServerThread, upstream: FakeOpenAIUpstream,
                                                      client: openai.OpenAI, usage: UsageLog) -> None:
    upstream.enqueue(Fault(chunk_delay=0.2))
    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": " ".join(["word"] * 40)}]}
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body,
                         headers={"authorization": f"Bearer {MASTER_KEY}"}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            upstream.wait_until(lambda: upstream.open_streams == 1)
        # leaving the block closes the connection mid-stream
    upstream.wait_until(lambda: upstream.aborted_streams == 1 and upstream.open_streams == 0, timeout=5)
    [record] = usage.wait(1)
    assert record.status == 499 and record.error_code == "client_closed"


def test_client_disconnect_while_waiting_cancels_the_upstream_call(
    gateway: ServerThread, upstream: FakeOpenAIUpstream, client: openai.OpenAI, usage: UsageLog
) -> None:
    upstream.enqueue(Fault(hang=True))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=0.3,
                   headers={"authorization": f"Bearer {MASTER_KEY}"})
    [record] = usage.wait(1)
    # 499 (client gone), not the 504 the provider's 1.5 s first-token deadline would have produced
    assert record.status == 499 and record.error_code == "client_closed"
    assert record.latency_ms < 1500


def test_bad_input_matrix_keeps_serving(gateway: ServerThread, client: openai.OpenAI) -> None:
    url = f"{gateway.base_url}/v1/chat/completions"
    auth = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    ok_messages = [{"role": "user", "content": "hi"}]
    cases: list[tuple[bytes, int, str | None]] = [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b"", 400, None),
        (json.dumps({"model": "gpt-4o-mini"}).encode(), 400, "messages"),
        (json.dumps({"model": "gpt-4o-mini", "messages": "hi"}).encode(), 400, "messages"),
        (json.dumps({"model": 5, "messages": ok_messages}).encode(), 400, "model"),
        (json.dumps({"model": "gpt-4o-mini", "messages": ok_messages, "n": "2"}).encode(), 400, "n"),
        (json.dumps({"model": "gpt-4o-mini", "messages": ok_messages, "n": 1000}).encode(), 400, "n"),
        (json.dumps({"model": "gpt-4o-mini", "messages": ok_messages, "max_tokens": 10**9}).encode(), 400,
         "max_tokens"),
        (json.dumps({"model": "gpt-4o-mini", "messages": []}).encode(), 400, "messages"),
        (json.dumps({"model": "no-such-model", "messages": ok_messages}).encode(), 404, "model"),
        (json.dumps({"model": "gpt-4o-mini", "messages": [{"content": "no role"}]}).encode(), 400, None),
        (b'{"model": "gpt-4o-mini", "messages": [' + b'{"role":"user","content":"x"},' * 6000 + b"{}]}", 413, None),
    ]
    with httpx.Client(timeout=10) as http:
        for body, status, param in cases:
            response = http.post(url, content=body, headers=auth)
            assert response.status_code == status, (body[:60], response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            if param is not None:
                assert error["param"] == param, (body[:60], error)
            assert http.get(f"{gateway.base_url}/health/live").status_code == 200
        big = http.post(url, content=b"x" * 70000, headers={**auth})
        assert big.status_code == 413
        assert http.post(f"{gateway.base_url}/v1/nowhere", json={}).status_code == 404
        wrong_method = http.get(url, headers=auth)
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=ok_messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Echo: hi"


def test_readiness_reports_plugins(gateway: ServerThread) -> None:
    report = httpx.get(f"{gateway.base_url}/health/ready").json()
    assert report["ready"] is True
    assert {p["id"]: p["state"] for p in report["plugins"]}["provider-openai"] == "active"


def test_hot_unload_mid_stream_lets_the_stream_finish(gateway: ServerThread, upstream: FakeOpenAIUpstream,
                                                      client: openai.OpenAI) -> None:
    """Last in the module: it unloads the provider (and reloads it for hygiene)."""
    words = " ".join(f"w{i}" for i in range(15))
    upstream.enqueue(Fault(chunk_delay=0.05))
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": words}], stream=True
    )
    iterator = iter(stream)
    text = ""
    while not text:
        chunk = next(iterator)
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    unloading = gateway.submit(gateway.kernel.unload, "provider-openai")
    for chunk in iterator:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == f"Echo: {words}"
    info = unloading.result(timeout=10)
    assert info.state == "stopped"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    gateway.call(gateway.kernel.load, "provider-openai")
    assert client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "back"}]
    ).choices[0].message.content == "Echo: back"


def test_unload_past_the_drain_timeout_ends_the_stream_with_an_api_error(
    gateway: ServerThread, upstream: FakeOpenAIUpstream, client: openai.OpenAI, usage: UsageLog
) -> None:
    """Also last (it unloads and reloads the provider): a stream outliving the drain timeout is ended
    with an error event the SDK raises, not cut silently."""
    upstream.enqueue(Fault(chunk_delay=0.3))
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": " ".join(["word"] * 30)}], stream=True
    )
    iterator = iter(stream)
    next(iterator)
    unloading = gateway.submit(gateway.kernel.unload, "provider-openai", 0.2)
    with pytest.raises(openai.APIError, match="unloaded"):
        for _ in iterator:
            pass
    assert unloading.result(timeout=10).state == "stopped"
    [record] = usage.wait(1)
    assert (record.status, record.error_code) == (503, "provider_unloaded")
    upstream.wait_until(lambda: upstream.open_streams == 0)
    gateway.call(gateway.kernel.load, "provider-openai")
