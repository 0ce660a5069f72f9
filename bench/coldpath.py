"""What one upstream round trip costs when the machine was idle before it, against back to back.

The gateway benchmark's TTFT at 1 stream is measured after 20 ms pauses (the upstream paces its
chunks), and on a VM everything on the first token's path then runs with cold caches and on cores
woken from idle. This script isolates the part no gateway code can avoid: one chat request from a
client on CPU 0 (where the gateway runs) to ``upstream_stream.py`` on CPU 1, with

* ``sira``: Sira's upstream client, ``sira_kernel.upstream.Upstream`` (an ``httpx.Request`` built by
  ``Upstream.post`` and sent through its pooled aiohttp session, body read and response released),
* ``aiohttp``: aiohttp's own client used the plain way (``async with session.post(...)``),
* ``httpx+aiohttp``: httpx over the ``httpx-aiohttp`` transport, called through the transport (what
  ``Upstream`` did before it sent through aiohttp directly),
* ``raw``: a bare asyncio + httptools exchange (what the benchmark's load generator uses),

each back to back and after a 20 ms idle pause, median of ``--requests`` round trips. Usage::

    .venv/bin/python bench/coldpath.py [--requests 200] [--gap-ms 20]

It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httptools
import httpx
import httpx_aiohttp
import uvloop

from canned import REQUEST, UPSTREAM_KEY
from procs import CLIENT_CPU, GATEWAY_CPU, Processes, free_port, pinned, pinning_available, wait_tcp
from sira_kernel import CallContext, ProviderError
from sira_kernel.upstream import Upstream, UpstreamSettings

HERE = Path(__file__).resolve().parent
def _no_status_error(status: int, headers: object, body: bytes, *, provider: str, secrets: object) -> ProviderError:
    raise AssertionError(f"the canned upstream answered {status}")


HEADERS = {"authorization": f"Bearer {UPSTREAM_KEY}", "content-type": "application/json"}


class _Raw(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: send a request, wait for the whole response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def exchange(self, request: bytes) -> None:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self.done


class _Owner:
    name = "coldpath"


async def measure(url: str, requests: int, gap_s: float) -> list[tuple[str, float, float]]:
    transport = httpx_aiohttp.AiohttpTransport(limits=httpx.Limits(max_connections=8, max_keepalive_connections=8))
    upstream = Upstream(_Owner(), UpstreamSettings(max_connections=8), status_error=_no_status_error)
    await upstream.open()
    ctx = CallContext(upstream_model="gpt-4o-mini", request_id="coldpath")
    sira_headers = httpx.Headers(HEADERS)
    session = aiohttp.ClientSession()
    target = httpx.URL(url)
    loop = asyncio.get_running_loop()
    _, raw = await loop.create_connection(_Raw, target.host, target.port)
    raw_request = (
        f"POST {target.raw_path.decode()} HTTP/1.1\r\nhost: {target.host}:{target.port}\r\n"
        f"authorization: Bearer {UPSTREAM_KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(REQUEST)}\r\n\r\n"
    ).encode() + REQUEST

    async def sira_client() -> None:
        await upstream.fetch(upstream.post(target, sira_headers, REQUEST, ctx), upstream.deadlines(ctx), 1 << 20)

    async def httpx_client() -> None:
        response = await transport.handle_async_request(httpx.Request("POST", target, headers=HEADERS, content=REQUEST))
        try:
            async for _ in response.stream:  # type: ignore[union-attr]
                pass
        finally:
            await response.aclose()

    async def aiohttp_client() -> None:
        async with session.post(url, data=REQUEST, headers=HEADERS) as response:
            await response.read()

    async def raw_client() -> None:
        await raw.exchange(raw_request)

    clients: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("sira", sira_client), ("aiohttp", aiohttp_client), ("httpx+aiohttp", httpx_client), ("raw", raw_client),
    ]
    rows = []
    try:
        for name, call in clients:
            medians = []
            for gap in (0.0, gap_s):
                for _ in range(20):
                    await call()
                samples = []
                for _ in range(requests):
                    if gap:
                        await asyncio.sleep(gap)
                    started = time.perf_counter()
                    await call()
                    samples.append(time.perf_counter() - started)
                medians.append(statistics.median(samples) * 1e6)
            rows.append((name, medians[0], medians[1]))
    finally:
        await session.close()
        await transport.aclose()
        await upstream.aclose()
        if raw.transport is not None:
            raw.transport.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--in-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_child:
        rows = uvloop.run(measure(args.url, args.requests, args.gap_ms / 1000))
        print(f"{'client':15s} {'back to back':>14s} {f'after {args.gap_ms:g} ms idle':>20s} {'cold/warm':>10s}")
        for name, warm, cold in rows:
            print(f"{name:15s} {warm:11.0f} us {cold:17.0f} us {cold / warm:9.1f}x")
        return
    with tempfile.TemporaryDirectory() as tmp, Processes(Path(tmp)) as procs:
        port = free_port()
        upstream = procs.start("upstream", pinned(CLIENT_CPU, [sys.executable, str(HERE / "upstream_stream.py"),
                                                               "--port", str(port)]))
        wait_tcp(port, upstream)
        where = "client on CPU 0, upstream on CPU 1" if pinning_available() else "unpinned (no taskset)"
        print(f"One chat completion round trip to upstream_stream.py, {where}, median of {args.requests}:")
        child = pinned(GATEWAY_CPU, [sys.executable, str(Path(__file__).resolve()), "--in-child",
                                     "--url", f"http://127.0.0.1:{port}/v1/chat/completions",
                                     "--requests", str(args.requests), "--gap-ms", str(args.gap_ms)])
        subprocess.run(child, check=True, cwd=HERE)


if __name__ == "__main__":
    main()
