"""The shared upstream plumbing this adapter runs on (``sira_kernel.upstream``), over real HTTP:
the fast request builder and the body reader's header and encoding handling."""

from __future__ import annotations

import asyncio
import gzip
import json
import re

import httpx
import pytest
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault
from sira_kernel.testing.providers import OpenProvider, call_context
from sira_kernel.testing.providers import chat_request as ask

from sira_provider_openai import OpenAIProvider

from .conftest import API_KEY

COMPLETION = {
    "id": "chatcmpl-gz", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "zipped"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}

pytestmark = pytest.mark.anyio


async def test_post_builds_the_request_httpx_would(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    upstream, ctx = provider.upstream, call_context("gpt-4o-mini")
    url = httpx.URL(f"{fake.base_url}/chat/completions")
    headers = httpx.Headers({"content-type": "application/json", "authorization": f"Bearer {API_KEY}"})
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    fast = upstream.post(url, headers, body, ctx)
    plain = httpx.Request("POST", url, headers=headers, content=body, extensions=upstream.extensions(ctx))
    assert (fast.method, fast.url, fast.content, fast.extensions) == (plain.method, plain.url, plain.content,
                                                                      plain.extensions)
    assert sorted(fast.headers.multi_items()) == sorted(plain.headers.multi_items())
    assert upstream.post(str(url), headers, body, ctx).url == url  # a string URL is parsed
    own = httpx.Headers({"host": "gateway.example", "content-length": "999", "x-extra": "1"})
    request = upstream.post(url, own, body, ctx)  # an operator's Host stays, the length is the body's
    assert request.headers.get_list("host") == ["gateway.example"]
    assert request.headers.get_list("content-length") == [str(len(body))]

    response = await upstream.send(fast, *upstream.deadlines(ctx)[1::-1])
    try:
        assert response.status == 200
    finally:
        response.release()
    sent = fake.requests[-1]
    assert sent.body == body and sent.headers["content-length"] == str(len(body))
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"


async def test_an_encoded_answer_is_decoded_and_an_identity_one_relayed(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    raw = json.dumps(COMPLETION).encode()
    fake.enqueue(Fault(body=gzip.compress(raw), headers={"Content-Encoding": "gzip"}))
    response = await provider.chat(ask("hi"), call_context("gpt-4o-mini"))
    assert response.choices[0].message.content == "zipped"  # the upstream ignored accept-encoding: identity
    fake.enqueue(Fault(body=raw, headers={"Content-Encoding": "identity"}))
    response = await provider.chat(ask("hi"), call_context("gpt-4o-mini"))
    assert response.choices[0].message.content == "zipped"
    assert fake.requests[-1].headers["accept-encoding"] == "identity"


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    ctx = call_context("gpt-4o-mini")
    ctx.max_response_bytes = 100
    fake.enqueue(Fault(body=b"{" + b" " * 200 + b"}"))
    with pytest.raises(Exception, match="larger than 100 bytes"):
        await provider.chat(ask("hi"), ctx)


def test_served_models_lists_configured_names_aliases_then_discovered() -> None:
    from sira_kernel.types import ModelInfo
    from sira_kernel.upstream import served_models

    listed = served_models(
        ["chat-a"], {"fast": "chat-a", "vectors": "emb-a", "chat-a": "chat-b"},
        embedding_models=["emb-a"], discovered=[ModelInfo("chat-a", owned_by="up"), ModelInfo("new-1")],
        owned_by="acme",
    )
    by_id = {m.id: m for m in listed}
    assert [m.id for m in listed] == ["chat-a", "emb-a", "fast", "vectors", "new-1"]
    assert by_id["emb-a"].kind == "embedding" and by_id["vectors"].kind == "embedding"
    assert (by_id["fast"].upstream, by_id["fast"].kind, by_id["fast"].owned_by) == ("chat-a", "chat", "acme")
    assert by_id["chat-a"].upstream == "chat-b"  # an alias may re-point a configured name
    assert by_id["new-1"].owned_by == "sira"  # discovered entries are kept as the adapter made them


async def test_an_upstream_cookie_is_never_sent_back(
    open_provider: OpenProvider, fake: FakeOpenAIUpstream
) -> None:
    # By host name: aiohttp's default cookie jar ignores cookies from IP addresses, so only a named
    # host shows whether one would be kept (and replayed to the upstream on every later call, whoever
    # made it).
    base_url = fake.base_url.replace("127.0.0.1", "localhost")
    async with open_provider(base_url=base_url, models=["gpt-4o-mini"]) as provider:
        fake.enqueue(Fault(headers={"Set-Cookie": "tenant=a; Path=/; Max-Age=3600"}))
        await provider.chat(ask("hi"), call_context("gpt-4o-mini"))
        assert fake.requests[-1].headers.get("cookie") is None
        await provider.chat(ask("hi"), call_context("gpt-4o-mini"))
        events = [event async for event in provider.stream(ask("hi"), call_context("gpt-4o-mini"))]
        assert events
        assert [request.headers.get("cookie") for request in fake.requests] == [None, None, None]


async def test_requests_go_through_the_configured_proxy_with_its_credentials(
    open_provider: OpenProvider,
) -> None:
    heads: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A forward proxy that answers itself: enough to see what the gateway sent it.
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        heads.append(head)
        body = json.dumps(COMPLETION).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        writer.write(b"content-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, open_provider(
        base_url="http://upstream.invalid/v1", proxy=f"http://sira:s3cret@127.0.0.1:{port}",
        models=["gpt-4o-mini"],
    ) as provider:
        response = await provider.chat(ask("hi"), call_context("gpt-4o-mini"))
    assert response.choices[0].message.content == "zipped"
    (head,) = heads
    assert head.split(b"\r\n")[0] == b"POST http://upstream.invalid/v1/chat/completions HTTP/1.1"
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if line)
    headers = {key.lower(): value for key, value in headers.items()}
    assert headers[b"proxy-authorization"] == b"Basic c2lyYTpzM2NyZXQ="  # base64("sira:s3cret")
    assert headers[b"authorization"] == f"Bearer {API_KEY}".encode()


@pytest.mark.parametrize("end_delay", [0.0, 0.05], ids=["terminator-with-done", "terminator-later"])
async def test_a_finished_stream_gives_its_connection_back(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream, end_delay: float
) -> None:
    # After [DONE] the rest of the body (the chunked terminator) is read, at once when it came with
    # the last event, else by waiting for it, so the next call reuses the connection.
    for _ in range(3):
        fake.enqueue(Fault(end_delay=end_delay))
        events = [event async for event in provider.stream(ask("hi"), call_context("gpt-4o-mini"))]
        assert events
    ports = {request.peer_port for request in fake.requests}
    assert len(ports) == 1 and 0 not in ports


async def test_the_connect_timeout_comes_from_the_request_else_from_open(provider: OpenAIProvider) -> None:
    upstream = provider.upstream
    await upstream.aclose()
    await upstream.open(connect_timeout=2.5)
    ctx = call_context("gpt-4o-mini")
    ctx.connect_timeout = 1.5
    built = upstream.post("http://127.0.0.1:9/v1/chat/completions", httpx.Headers(), b"{}", ctx)
    bare = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions", content=b"{}")
    assert upstream._timeout(built).sock_connect == 1.5
    assert upstream._timeout(bare).sock_connect == 2.5  # an adapter that did not pass extensions(ctx)
