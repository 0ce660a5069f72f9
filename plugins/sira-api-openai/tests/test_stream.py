"""The chat endpoint's stream relay, driven as an ASGI app on an in-process kernel: how a stream ends
when the client goes away, and what the usage record says about it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest
from sira_api_openai import OpenAISurfacePlugin

from sira_kernel import Kernel, UsageRecord
from sira_kernel.bus import Subscription
from sira_kernel.testing import FakeProvider, FakeProviderPlugin, make_kernel

pytestmark = pytest.mark.anyio

MASTER = "sk-unit-master-0123456789"
BODY = msgspec.json.encode(
    {"model": "fake-1", "stream": True, "messages": [{"role": "user", "content": "one two three four five"}]}
)


@pytest.fixture
async def kernel() -> AsyncIterator[Kernel]:
    config = {"server": {"master_key": MASTER}, "plugins": {"fake": {"delay": 0.01}}}
    async with make_kernel({"api-openai": OpenAISurfacePlugin, "fake": FakeProviderPlugin}, config) as kernel:
        yield kernel


class Client:
    """One streaming request: its body, then ``disconnect`` (an Event) as the next ``receive``."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.disconnect = anyio.Event()
        self._body_read = False
        self.scope = {
            "type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "query_string": b"", "headers": [(b"authorization", f"Bearer {MASTER}".encode())],
            "client": ("127.0.0.1", 5000), "sira.request_id": "req-unit",
        }

    async def receive(self) -> dict[str, Any]:
        if not self._body_read:
            self._body_read = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def _usage(kernel: Kernel, client: Client, send: Any = None) -> UsageRecord:
    records: list[UsageRecord] = []
    subscription = Subscription("test-usage", "usage.request", records.append)
    kernel.bus.add(subscription)
    kernel.task_group.start_soon(subscription.run)
    await kernel.snapshot.apps["public"](client.scope, client.receive, send or client.send)
    with anyio.fail_after(5):
        while not records:
            await anyio.sleep(0.001)
    [record] = records
    return record


def _provider(kernel: Kernel) -> FakeProvider:
    provider, _ = kernel.snapshot.providers["fake"]
    assert isinstance(provider, FakeProvider)
    return provider


def _assert_nothing_held(kernel: Kernel) -> None:
    assert kernel.scheduler.pools["requests"].in_use == 0 and kernel.scheduler.outstanding == 0
    assert all(h.leases == 0 for h in kernel.plugins.handles.values())


async def test_a_complete_stream_is_a_200_even_though_the_server_then_reports_a_disconnect(kernel: Kernel) -> None:
    client = Client()

    async def send(message: dict[str, Any]) -> None:
        await client.send(message)
        if message.get("more_body") is False:  # servers report http.disconnect once the response is complete
            client.disconnect.set()
            await anyio.sleep(0.01)  # and the watcher sees it before the relay returns

    record = await _usage(kernel, client, send)
    assert client.body.endswith(b"data: [DONE]\n\n") and client.sent[-1]["more_body"] is False
    assert record.status == 200 and record.stream
    _assert_nothing_held(kernel)


async def test_a_client_that_disconnects_mid_stream_cancels_it(kernel: Kernel) -> None:
    client = Client()

    async def send(message: dict[str, Any]) -> None:
        await client.send(message)
        if len(client.sent) == 3:  # the head, the role chunk and one word
            client.disconnect.set()

    record = await _usage(kernel, client, send)
    assert b"[DONE]" not in client.body
    assert (record.status, record.error_code) == (499, "client_closed")
    assert _provider(kernel).closed_streams == 1
    _assert_nothing_held(kernel)


async def test_a_send_that_fails_mid_stream_ends_it_as_client_gone(kernel: Kernel) -> None:
    """A server that cannot write to the client raises OSError from ``send``: the relay must not let
    it out wrapped in an ExceptionGroup (nor at all: nobody is left to answer), and the usage record
    says the client went away."""
    client = Client()

    async def send(message: dict[str, Any]) -> None:
        if len(client.sent) == 3:
            raise ConnectionResetError("the client is gone")
        await client.send(message)

    record = await _usage(kernel, client, send)  # returns: no exception, grouped or not
    assert len(client.sent) == 3
    assert (record.status, record.error_code) == (499, "client_closed")
    assert _provider(kernel).closed_streams == 1
    _assert_nothing_held(kernel)
