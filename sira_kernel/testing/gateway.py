"""End-to-end test helpers: a real client → Sira in a :class:`ServerThread` → a fake upstream.

What every gateway test module needs beside its client and its fake upstream:

* :func:`gateway_config` is the standard kernel.toml-shaped config: the master key, tight limits
  (a 64 KiB body, 1.5 s to the first token, 5 s in all) so failure tests are quick, and
  ``provider-openai`` pointed at a :class:`~sira_kernel.testing.fake_openai.FakeOpenAIUpstream`.
* :class:`UsageLog` subscribes to the running kernel's bus and collects every
  :class:`~sira_kernel.events.UsageRecord`, so a test can say what was metered.
* :func:`assert_nothing_held` checks, after a test, that no request capacity, scheduler
  reservation or plugin lease is left held (a stream or an error path that forgot to settle).
* :func:`http_chunks` posts over a raw socket and returns the response's HTTP chunks as framed,
  one per body message the server sent: which stream events went out in one write.

In short (a request from any client between ``subscribe`` and ``wait``)::

    with FakeOpenAIUpstream() as upstream:
        with ServerThread(lambda: make_kernel(config=gateway_config(upstream))) as server:
            usage = UsageLog.subscribe(server)
            httpx.post(f"{server.base_url}/v1/chat/completions", json=body,
                       headers={"authorization": f"Bearer {MASTER_KEY}"})
            [record] = usage.wait(1)
            assert_nothing_held(server)

``tests/test_gateway_openai.py`` shows the pytest shape: module-scoped ``upstream``, ``gateway``
and ``usage`` fixtures, and a per-test client fixture that resets the fake upstream, drops the
records earlier tests left (``usage.take()``) and ends with :func:`assert_nothing_held`.

Everything here blocks the calling (test) thread; the kernel runs on the server's loop.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from ..bus import Subscription
from ..events import UsageRecord
from . import ServerThread

if TYPE_CHECKING:
    from .fake_openai import FakeOpenAIUpstream

__all__ = ["MASTER_KEY", "UPSTREAM_KEY", "UsageLog", "assert_nothing_held", "gateway_config", "http_chunks"]

MASTER_KEY = "sk-test-master-0123456789"
"""The gateway's ``server.master_key`` in :func:`gateway_config`: clients authenticate with it."""
UPSTREAM_KEY = "sk-upstream-secret-0123456789"
"""The key ``provider-openai`` sends upstream in :func:`gateway_config` (tests check it never leaks)."""


def gateway_config(
    upstream: FakeOpenAIUpstream,
    *,
    plugins: Sequence[str] = ("api-openai", "provider-openai"),
    models: Sequence[str] = ("gpt-4o-mini", "gpt-4o"),
    embedding_models: Sequence[str] | None = None,
    limits: Mapping[str, Any] | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    master_key: str = MASTER_KEY,
    upstream_key: str = UPSTREAM_KEY,
) -> dict[str, Any]:
    """The standard end-to-end config (a kernel.toml-shaped dict, for ``make_kernel(config=...)``).

    ``plugins`` are the enabled plugin ids (``kernel.plugins``); ``provider-openai`` serves
    ``models`` (and ``embedding_models``, when given) from ``upstream`` with ``upstream_key``.
    ``limits`` overrides or adds keys of the ``[limits]`` section; ``sections`` adds
    ``[plugins.<id>]`` sections (another provider, a second instance with ``use``, a router) or
    replaces ``provider-openai``'s. Unloads drain for up to 10 s and plugins get 2 s to stop.
    """
    provider: dict[str, Any] = {"base_url": upstream.base_url, "api_key": upstream_key, "models": list(models)}
    if embedding_models is not None:
        provider["embedding_models"] = list(embedding_models)
    return {
        "kernel": {"plugins": list(plugins), "drain_timeout": 10.0, "stop_timeout": 2.0},
        "server": {"master_key": master_key},
        "limits": {
            "max_body_bytes": 65536, "max_tokens": 4096,
            "first_token_timeout": 1.5, "total_timeout": 5.0, "connect_timeout": 2.0,
            **(limits or {}),
        },
        "plugins": {"provider-openai": provider, **{k: dict(v) for k, v in (sections or {}).items()}},
    }


class UsageLog:
    """Every :class:`~sira_kernel.events.UsageRecord` the kernel publishes, from a real bus subscription.

    Attach one to a running server with :meth:`subscribe`. Records arrive on the server's loop
    after the response went out, so wait for them with :meth:`wait` rather than reading at once.
    """

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.lock = threading.Lock()

    @classmethod
    def subscribe(cls, server: ServerThread, topic: str = "usage.request", name: str = "test-usage") -> UsageLog:
        """A new log subscribed (as ``name``) to ``topic`` on ``server``'s kernel bus."""
        log = cls()
        subscription = Subscription(name, topic, log)

        async def subscribe() -> None:
            server.kernel.bus.add(subscription)
            server.kernel.task_group.start_soon(subscription.run)

        server.call(subscribe)
        return log

    def __call__(self, record: UsageRecord) -> None:
        with self.lock:
            self.records.append(record)

    def take(self) -> list[UsageRecord]:
        """The records collected so far, which are forgotten."""
        with self.lock:
            out, self.records = self.records, []
        return out

    def wait(self, count: int, timeout: float = 2.0, settle: float = 0.05) -> list[UsageRecord]:
        """Take records until there are ``count`` (or ``timeout`` seconds passed), then ``settle``
        seconds more so that any extra record shows up too: check the length of what it returns."""
        deadline = time.monotonic() + timeout
        got = self.take()
        while len(got) < count and time.monotonic() < deadline:
            time.sleep(0.01)
            got += self.take()
        time.sleep(settle)
        got += self.take()
        return got


def assert_nothing_held(server: ServerThread, timeout: float = 2.0, pool: str = "requests") -> None:
    """Fail unless, within ``timeout`` seconds, nothing is held: no slot of the ``pool`` concurrency
    pool, no outstanding scheduler reservation, no lease on any plugin.

    Streams finish their bookkeeping just after their last byte, so it polls rather than reading once.
    """

    async def state() -> tuple[int, int, dict[str, int]]:
        kernel = server.kernel
        leases = {h.id: h.leases for h in kernel.plugins.handles.values()}
        return kernel.scheduler.pools[pool].in_use, kernel.scheduler.outstanding, leases

    deadline = time.monotonic() + timeout
    while True:
        in_use, outstanding, leases = server.call(state)
        if in_use == 0 and outstanding == 0 and not any(leases.values()):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"capacity held after the test: in_use={in_use} outstanding={outstanding} {leases}")
        time.sleep(0.02)


def http_chunks(base_url: str, path: str, body: Any, api_key: str = MASTER_KEY, timeout: float = 10.0) -> list[bytes]:
    """POST ``body`` (JSON) to ``path`` over a raw socket and return the response body's HTTP/1.1
    chunks as the server framed them: one per body message it sent (one write each).

    What no HTTP client shows: which events a streaming answer sent together. Raises
    ``AssertionError`` if the answer is not a 200 with a chunked body.
    """
    url = httpx.URL(base_url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {url.host}:{url.port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {api_key}\r\ncontent-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    ).encode()
    received = b""
    with socket.create_connection((url.host, url.port or 80), timeout=timeout) as sock:
        sock.sendall(head + payload)
        while data := sock.recv(65536):
            received += data
    status_line, _, rest = received.partition(b"\r\n")
    headers, _, framed = rest.partition(b"\r\n\r\n")
    assert status_line.split()[1] == b"200", received[:300]
    assert b"transfer-encoding: chunked" in headers.lower(), headers
    chunks: list[bytes] = []
    while True:
        size_line, _, framed = framed.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return chunks
        chunks.append(framed[:size])
        assert framed[size : size + 2] == b"\r\n", framed[: size + 2]
        framed = framed[size + 2 :]
