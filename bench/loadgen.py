"""A Python load generator: N concurrent clients posting chat completions, one JSON line out.

Used for what wrk cannot measure (time to first token of a stream) and as the fallback when wrk
is not installed. Each client loops on one keep-alive connection until ``--duration`` has passed
or ``--requests`` have been sent in total. For streams it records the time from sending the
request to the first ``data:`` bytes (TTFT) as well as the time to the end of the stream.

``--ramp S`` starts the clients evenly spread over S seconds and keeps only the requests sent
after that: with equal-length paced streams, clients started together stay in lockstep and every
stream opens in the same millisecond as 99 others, which measures a burst, not 100 concurrent
streams. Give the ramp the length of one stream.

The default client is a minimal HTTP/1.1 exchange over asyncio + httptools (see
:class:`Exchange` for why); ``--client aiohttp`` uses aiohttp instead, for cross-checking.
Prints one JSON object: ``requests``, ``errors``, ``first_error``, ``duration_s``, ``rps``,
``latency_ms`` and ``ttft_ms`` (each ``{"p50", "p90", "p99", "max", "mean"}``, empty when no
sample). Usage::

    python bench/loadgen.py --url http://127.0.0.1:8102/v1/chat/completions --concurrency 16 \\
        --duration 5 [--stream] [--requests N] [--ramp 0.25] [--processes P]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httptools
import uvloop

from canned import MASTER_KEY, REQUEST, STREAM_REQUEST


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99, max and mean of durations in seconds, in milliseconds."""
    if not samples_s:
        return {}
    ordered = sorted(samples_s)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": ordered[-1] * 1000,
        "mean": sum(ordered) / len(ordered) * 1000,
    }


@dataclass
class Run:
    """One load run's plan (when to start measuring, when to stop) and its samples."""

    url: str
    stream: bool
    concurrency: int
    measure_from: float
    deadline: float = math.inf
    remaining: float = math.inf
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    @property
    def body(self) -> bytes:
        return STREAM_REQUEST if self.stream else REQUEST

    def take(self) -> bool:
        """Whether a client may send another request (and count it against the budget)."""
        if self.remaining <= 0 or time.perf_counter() >= self.deadline:
            return False
        self.remaining -= 1
        return True

    def start_delay(self, client: int) -> float:
        """When client number ``client`` starts, spreading the clients over the ramp."""
        ramp = self.measure_from - time.perf_counter()
        return max(0.0, ramp * client / self.concurrency)

    def failed(self, reason: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or reason

    def record(self, status: int, started: float, first: float | None) -> None:
        finished = time.perf_counter()
        if status != 200 or (self.stream and first is None):
            self.failed(f"status {status}" + (" without data:" if status == 200 else ""))
        elif started >= self.measure_from:
            self.latencies.append(finished - started)
            if first is not None:
                self.ttfts.append(first - started)


class Exchange(asyncio.Protocol):
    """One keep-alive connection speaking just enough HTTP/1.1 for the benchmark.

    The request bytes are prebuilt and the response is parsed by httptools, so the client adds
    tens of microseconds per request, not the few hundred a full client library costs (aiohttp
    measured about 0.5 ms here, which would blur the time to first token it is measuring).
    """

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[int] | None = None
        self.first: float | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        if self.first is None and b"data:" in body:
            self.first = time.perf_counter()

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    async def send(self, request: bytes) -> int:
        """Write ``request``, wait for the whole response, return its status."""
        assert self.transport is not None
        self.first = None
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def raw_request(url: str, body: bytes) -> tuple[str, int, bytes]:
    """Host, port and the bytes of ``POST url`` with the benchmark's headers and ``body``."""
    parts = urllib.parse.urlsplit(url)
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
        f"authorization: Bearer {MASTER_KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return parts.hostname or "127.0.0.1", parts.port or 80, head.encode() + body


async def raw_client(run: Run, index: int) -> None:
    await asyncio.sleep(run.start_delay(index))
    loop = asyncio.get_running_loop()
    host, port, request = raw_request(run.url, run.body)
    exchange: Exchange | None = None
    while run.take():
        started = time.perf_counter()
        try:
            if exchange is None or exchange.closed:
                _, exchange = await loop.create_connection(Exchange, host, port)
            async with asyncio.timeout(60):
                status = await exchange.send(request)
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:
            run.failed(repr(exc))
            if exchange is not None:
                exchange.close()
            exchange = None
            continue
        run.record(status, started, exchange.first)
    if exchange is not None:
        exchange.close()


async def aiohttp_client(run: Run, index: int, session: aiohttp.ClientSession) -> None:
    await asyncio.sleep(run.start_delay(index))
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    while run.take():
        started = time.perf_counter()
        first: float | None = None
        try:
            async with session.post(run.url, data=run.body, headers=headers) as response:
                if run.stream:
                    async for data in response.content.iter_any():
                        if first is None and b"data:" in data:
                            first = time.perf_counter()
                else:
                    await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            run.failed(repr(exc))
            continue
        run.record(status, started, first)


async def load(
    url: str,
    concurrency: int,
    duration_s: float | None,
    requests: int | None,
    stream: bool,
    ramp_s: float,
    client: str,
) -> dict[str, Any]:
    """Run the clients; return the samples (seconds) and counters of the measured window."""
    start = time.perf_counter()
    run = Run(url, stream, concurrency, measure_from=start + ramp_s)
    if duration_s:
        run.deadline = run.measure_from + duration_s
    if requests is not None:
        run.remaining = requests
    if client == "raw":
        await asyncio.gather(*(raw_client(run, i) for i in range(concurrency)))
    else:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            await asyncio.gather(*(aiohttp_client(run, i, session) for i in range(concurrency)))
    end = time.perf_counter()
    return {
        "latencies": run.latencies,
        "ttfts": run.ttfts,
        "errors": run.errors,
        "first_error": run.first_error,
        "duration_s": end - (run.measure_from if end > run.measure_from else start),
    }


def _worker(kwargs: dict[str, Any]) -> dict[str, Any]:
    return uvloop.run(load(**kwargs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=None, help="seconds measured (after the ramp)")
    parser.add_argument("--requests", type=int, default=None, help="total request budget")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which the clients start")
    parser.add_argument("--processes", type=int, default=1, help="split the clients over P processes")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="default: raw (httptools)")
    args = parser.parse_args()
    if args.duration is None and args.requests is None:
        parser.error("give --duration, --requests or both")
    processes = max(1, min(args.processes, args.concurrency))
    jobs = []
    for i in range(processes):
        requests = None
        if args.requests is not None:
            requests = args.requests // processes + (i < args.requests % processes)
        jobs.append(
            {
                "url": args.url,
                "concurrency": args.concurrency // processes + (i < args.concurrency % processes),
                "duration_s": args.duration,
                "requests": requests,
                "stream": args.stream,
                "ramp_s": args.ramp,
                "client": args.client,
            }
        )
    if processes == 1:
        parts = [_worker(jobs[0])]
    else:
        with multiprocessing.Pool(processes) as pool:
            parts = pool.map(_worker, jobs)
    latencies = [x for part in parts for x in part["latencies"]]
    ttfts = [x for part in parts for x in part["ttfts"]]
    duration = max(part["duration_s"] for part in parts)
    result = {
        "requests": len(latencies),
        "errors": sum(part["errors"] for part in parts),
        "first_error": next((part["first_error"] for part in parts if part["first_error"]), None),
        "duration_s": duration,
        "rps": len(latencies) / duration if duration else 0.0,
        "latency_ms": percentiles(latencies),
        "ttft_ms": percentiles(ttfts),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
