"""The public and admin apps find parameterless routes by a dict lookup (``asgi._ExactFirst``):
every answer must still be the one Starlette's ordered scan would give."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Router, WebSocketRoute
from starlette.types import Receive, Scope, Send

from sira_kernel.asgi import _ExactFirst, _not_found, _Route

pytestmark = pytest.mark.anyio


class endpoint:  # noqa: N801 - an ASGI app class, as the surfaces' endpoints are
    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = f"{self.name} {scope['path_params']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def websocket(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    raise AssertionError


def apps() -> tuple[_ExactFirst, Router]:
    routes = [
        WebSocketRoute("/v1/chat/completions", websocket),  # never matches an HTTP request
        _Route("/v1/{name}/completions", endpoint("pattern"), methods=["GET"]),
        _Route("/v1/chat/completions", endpoint("chat"), methods=["POST"]),
        _Route("/v1/models", endpoint("models-get"), methods=["GET"]),
        _Route("/v1/models", endpoint("models-post"), methods=["POST"]),
        _Route("/v1/embeddings", endpoint("embeddings"), methods=["POST"]),
        _Route("/any", endpoint("any")),
    ]
    return (_ExactFirst(Router(routes=routes, default=_not_found, redirect_slashes=False)),
            Router(routes=routes, default=_not_found, redirect_slashes=False))


async def call(app: Any, method: str, path: str, root_path: str = "") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": [],
             "query_string": b"", "raw_path": path.encode()}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_only_routes_no_earlier_route_could_match_are_looked_up_directly() -> None:
    fast, _ = apps()
    # /v1/chat/completions: the GET pattern before it matches the path, so Starlette decides.
    assert sorted(fast.exact) == ["/any", "/v1/embeddings", "/v1/models"]
    assert fast.exact["/v1/models"].methods == {"GET", "HEAD"}  # the first one registered


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"), ("GET", "/v1/chat/completions"), ("PUT", "/v1/chat/completions"),
        ("GET", "/v1/models"), ("HEAD", "/v1/models"), ("POST", "/v1/models"), ("DELETE", "/v1/models"),
        ("POST", "/v1/embeddings"), ("GET", "/v1/embeddings"), ("PATCH", "/any"), ("GET", "/v1/embeddings/"),
        ("GET", "/nowhere"),
    ],
)
async def test_every_answer_is_the_routers(method: str, path: str) -> None:
    fast, plain = apps()
    assert await call(fast, method, path) == await call(plain, method, path)
    assert await call(fast, method, path, root_path="/gw") == await call(plain, method, path, root_path="/gw")


async def test_a_direct_hit_and_a_fallback_answer_as_expected() -> None:
    fast, _ = apps()
    assert await call(fast, "POST", "/v1/models") == (200, b"models-post {}")  # second route, via the router
    assert await call(fast, "GET", "/v1/models") == (200, b"models-get {}")
    status, body = await call(fast, "DELETE", "/v1/embeddings")
    assert status == 405 and b"method_not_allowed" in body
    assert await call(fast, "GET", "/v1/chat/completions") == (200, b"pattern {'name': 'chat'}")
