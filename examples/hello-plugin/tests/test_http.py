"""Over real HTTP with ``ServerThread``, including hot unload, load and replace while serving."""

from __future__ import annotations

import time
from typing import Any

import httpx

from sira_kernel.testing import FakeProviderPlugin, ServerThread, make_kernel


def factory() -> Any:
    return make_kernel(
        {"fake": FakeProviderPlugin},
        config={"plugins": {"hello": {"greeting": "Howdy"}}},
        enable=["hello", "fake", "api-openai"],
    )


def seen_eventually(client: httpx.Client, expected: int, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := client.get("/hello").json()["requests_seen"]) != expected:
        assert time.monotonic() < deadline, f"requests_seen stayed {seen}, expected {expected}"
        time.sleep(0.01)


def test_hello_over_http_with_hot_reload() -> None:
    with ServerThread(factory) as server, httpx.Client(base_url=server.base_url, timeout=5) as client:
        response = client.get("/hello", params={"name": "Ada"})
        assert response.status_code == 200
        assert response.json() == {"message": "Howdy, Ada!", "greeting": "Howdy", "requests_seen": 0, "plugin": "hello"}
        assert response.headers["x-hello"] == "hello"  # the middleware wraps every route...
        assert client.get("/health").headers["x-hello"] == "hello"  # ...the kernel's own included

        chat = {"model": "fake-1", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
        seen_eventually(client, 2)  # usage.request records, delivered on the bus

        # Hot unload: route, middleware and service leave at once; the gateway keeps serving.
        server.call(server.kernel.unload, "hello")
        gone = client.get("/hello")
        assert gone.status_code == 404 and "x-hello" not in gone.headers
        assert client.post("/v1/chat/completions", json=chat).status_code == 200

        # Hot load: a fresh instance (its counter starts at zero; the request above was not seen).
        server.call(server.kernel.load, "hello")
        assert client.get("/hello").json()["requests_seen"] == 0
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        seen_eventually(client, 1)

        # Replace: make-before-break, a new generation with the current config.
        server.call(server.kernel.replace, "hello")
        assert client.get("/hello", params={"name": "Bo"}).json()["message"] == "Howdy, Bo!"
        seen_eventually(client, 0)
