"""A Python load generator: N concurrent clients posting chat completions, one JSON line out.

Used for what wrk cannot measure (time to first token of a stream) and as the fallback when wrk
is not installed. Each client loops on one keep-alive connection until ``--duration`` has passed
or ``--requests`` have been sent in total. For streams it records the time from sending the
request to the first ``data:`` bytes (TTFT) as well as the time to the end of the stream.

Prints one JSON object: ``requests``, ``errors``, ``duration_s``, ``rps``, ``latency_ms`` and,
for streams, ``ttft_ms`` (each ``{"p50", "p90", "p99", "max", "mean"}``), ``first_error``.
Usage::

    python bench/loadgen.py --url http://127.0.0.1:8102/v1/chat/completions --concurrency 16 \\
        --duration 5 [--stream] [--requests N] [--processes P]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import time
from typing import Any

import aiohttp
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


class Budget:
    """When to stop: a deadline, a request count shared by the clients, or both."""

    def __init__(self, duration_s: float | None, requests: int | None) -> None:
        self.deadline = time.perf_counter() + duration_s if duration_s else math.inf
        self.remaining = requests if requests is not None else math.inf

    def take(self) -> bool:
        if self.remaining <= 0 or time.perf_counter() >= self.deadline:
            return False
        self.remaining -= 1
        return True


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    stream: bool,
    budget: Budget,
    stats: dict[str, Any],
) -> None:
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    while budget.take():
        started = time.perf_counter()
        first: float | None = None
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if stream:
                    async for data in response.content.iter_any():
                        if first is None and b"data:" in data:
                            first = time.perf_counter()
                else:
                    await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            stats["errors"] += 1
            stats["first_error"] = stats["first_error"] or repr(exc)
            continue
        finished = time.perf_counter()
        if status != 200 or (stream and first is None):
            stats["errors"] += 1
            stats["first_error"] = stats["first_error"] or f"status {status}"
            continue
        stats["latencies"].append(finished - started)
        if first is not None:
            stats["ttfts"].append(first - started)


async def run(
    url: str, concurrency: int, duration_s: float | None, requests: int | None, stream: bool
) -> dict[str, Any]:
    """Run the clients and return the raw samples (seconds) and counters."""
    stats: dict[str, Any] = {"latencies": [], "ttfts": [], "errors": 0, "first_error": None}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    body = STREAM_REQUEST if stream else REQUEST
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        budget = Budget(duration_s, requests)
        started = time.perf_counter()
        await asyncio.gather(*(_client(session, url, body, stream, budget, stats) for _ in range(concurrency)))
        stats["duration_s"] = time.perf_counter() - started
    return stats


def _worker(args: tuple[str, int, float | None, int | None, bool]) -> dict[str, Any]:
    return uvloop.run(run(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=None, help="seconds (default: until --requests)")
    parser.add_argument("--requests", type=int, default=None, help="total request budget")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--processes", type=int, default=1, help="split the clients over P processes")
    args = parser.parse_args()
    if args.duration is None and args.requests is None:
        parser.error("give --duration, --requests or both")
    processes = max(1, min(args.processes, args.concurrency))
    if processes == 1:
        parts = [_worker((args.url, args.concurrency, args.duration, args.requests, args.stream))]
    else:
        jobs = []
        for i in range(processes):
            concurrency = args.concurrency // processes + (i < args.concurrency % processes)
            requests = None
            if args.requests is not None:
                requests = args.requests // processes + (i < args.requests % processes)
            jobs.append((args.url, concurrency, args.duration, requests, args.stream))
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
