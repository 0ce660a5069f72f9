"""Raw ASGI plumbing for the surface: reading a bounded body, answering, watching for a disconnect.

These mirror ``sira_api_openai``'s private helpers. They are generic (nothing Anthropic-specific
but the ``surface`` name and the error body); they belong in the kernel once a second surface
needs them too, which is now.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import anyio
from sira_kernel import PayloadTooLarge, RequestInfo

__all__ = [
    "ClientGone",
    "Receive",
    "Scope",
    "Send",
    "read_body",
    "request_id_headers",
    "request_info",
    "send_json",
    "unless_disconnected",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

_JSON = (b"content-type", b"application/json")


class ClientGone(Exception):
    """The client disconnected before we could answer it."""


def request_info(scope: Scope) -> RequestInfo:
    """The request facts auth plugins see; ``path`` is the raw ASGI path."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    client = scope.get("client")
    return RequestInfo(
        method=scope["method"],
        path=scope.get("raw_path", b"").decode("latin-1") or scope["path"],
        headers=headers,
        client=client[0] if client else None,
        surface="anthropic",
        request_id=scope.get("sira.request_id", ""),
    )


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing (413) anything over ``limit`` bytes before reading it all."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0
            if declared > limit:
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            break
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        if body:
            total += len(body)
            if total > limit:
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            chunks.append(body)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def request_id_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The request id, under Anthropic's name (the SDK exposes it as ``_request_id``) and Sira's."""
    request_id = scope.get("sira.request_id", "").encode()
    return [(b"request-id", request_id), (b"x-request-id", request_id)]


async def send_json(
    scope: Scope, send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [_JSON, *request_id_headers(scope), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def unless_disconnected(receive: Receive, call: Callable[[], Awaitable[T]]) -> T:
    """Await ``call()``; if the client disconnects first, cancel it (and the upstream call with it)."""
    gone = False
    error: Exception | None = None
    result: Any = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        try:
            result = await call()
        except Exception as exc:  # re-raised below, so it is not wrapped in an ExceptionGroup
            error = exc
        tg.cancel_scope.cancel()
    if gone:
        raise ClientGone
    if error is not None:
        raise error
    return result  # type: ignore[no-any-return]
