"""Shared surface helpers: body bounds without Content-Length, disconnects, request facts."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sira_kernel import PayloadTooLarge
from sira_kernel.surface import ClientGone, read_body, request_info, unless_disconnected

pytestmark = pytest.mark.anyio


def receiver(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    return receive


def scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/x", "raw_path": b"/v1/%2e%2e/x",
            "headers": headers or [], "client": ("10.0.0.1", 5), "sira.request_id": "req-1"}


async def test_chunked_body_is_counted_without_content_length() -> None:
    chunks = [{"type": "http.request", "body": b"a" * 40, "more_body": True},
              {"type": "http.request", "body": b"b" * 40, "more_body": False}]
    assert await read_body(scope(), receiver(*chunks), 100) == b"a" * 40 + b"b" * 40
    with pytest.raises(PayloadTooLarge):
        await read_body(scope(), receiver(*chunks), 79)


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async def receive() -> dict[str, Any]:  # pragma: no cover - must not be called
        raise AssertionError("read the body of an oversized request")

    with pytest.raises(PayloadTooLarge):
        await read_body(scope([(b"content-length", b"1000")]), receive, 100)


async def test_disconnect_while_reading_and_while_waiting() -> None:
    with pytest.raises(ClientGone):
        await read_body(scope(), receiver({"type": "http.disconnect"}), 100)
    cancelled = anyio.Event()

    async def slow() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    with pytest.raises(ClientGone):
        await unless_disconnected(receiver({"type": "http.disconnect"}), slow)
    assert cancelled.is_set()


async def test_unless_disconnected_reraises_the_call_error_unwrapped() -> None:
    async def failing() -> None:
        raise PayloadTooLarge("too big")

    with pytest.raises(PayloadTooLarge):
        await unless_disconnected(receiver(), failing)


def test_request_info_uses_the_raw_path_and_lowercases_headers() -> None:
    info = request_info(scope([(b"Authorization", b"Bearer sk-x-0123456789")]), "openai")
    assert info.path == "/v1/%2e%2e/x" and info.headers == {"authorization": "Bearer sk-x-0123456789"}
    assert (info.client, info.request_id, info.surface) == ("10.0.0.1", "req-1", "openai")
