"""Load generators behind one interface: wrk when installed, ``loadgen.py`` otherwise.

wrk (one thread, keep-alive connections, a Lua script adding the JSON body and the bearer key)
measures throughput and latency of complete responses, streams included: it reads a chunked SSE
response to its end. Its ``done()`` hook prints the numbers as JSON so that nothing depends on
wrk's human-readable output. ``loadgen.py`` (aiohttp) measures time to first token and replaces
wrk when wrk is missing. Both run pinned to :data:`procs.CLIENT_CPU`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from canned import MASTER_KEY, REQUEST, STREAM_REQUEST
from procs import CLIENT_CPU, pinned

__all__ = ["LoadResult", "find_wrk", "run_load", "run_python_load", "run_wrk", "run_wrk_budget"]

HERE = Path(__file__).resolve().parent

_WRK_COMMON = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local plain = {plain}
local stream = {stream}
"""

_WRK_TIMED = """\
wrk.body = {body}

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nBENCH_JSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
"""

# Request-count mode (leak check): wrk has no request budget, so the script counts responses and
# exits the whole process once the budget is spent. Run with one thread so the count is global.
_WRK_BUDGET = """\
local budget = {budget}
local mixed = {mixed}
local sent, seen, bad = 0, 0, 0
local plain_request, stream_request

init = function(args)
  plain_request = wrk.format(nil, nil, nil, plain)
  stream_request = wrk.format(nil, nil, nil, stream)
end

request = function()
  sent = sent + 1
  if mixed and sent % 2 == 0 then return stream_request end
  return plain_request
end

response = function(status, headers, body)
  seen = seen + 1
  if status ~= 200 then bad = bad + 1 end
  if seen >= budget then
    io.write(string.format('\\nBENCH_BUDGET {{"requests":%d,"bad":%d}}\\n', seen, bad))
    io.flush()
    os.exit(0)
  end
end
"""


@dataclass
class LoadResult:
    """One measurement cell. Latencies in milliseconds; ``None`` when not measured."""

    tool: str
    clients: int
    requests: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    first_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_wrk(install: bool = True) -> str | None:
    """The wrk binary, installing Debian's ``wrk`` if allowed and needed."""
    found = shutil.which("wrk")
    if found is None and install:
        from upstream_nginx import apt_install

        if apt_install("wrk"):
            found = shutil.which("wrk")
    return found


def _lua_string(data: bytes) -> str:
    # A Lua long bracket string needs no escaping as long as the closing bracket is absent.
    text = data.decode()
    assert "]==]" not in text
    return f"[==[{text}]==]"


def _write_script(text: str) -> Path:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-", delete=False) as f:
        f.write(text)
    return Path(f.name)


def _common(key: str) -> str:
    return _WRK_COMMON.format(key=key, plain=_lua_string(REQUEST), stream=_lua_string(STREAM_REQUEST))


def run_wrk(wrk: str, url: str, clients: int, duration_s: float, stream: bool, key: str = MASTER_KEY) -> LoadResult:
    """Run wrk for ``duration_s`` seconds with ``clients`` keep-alive connections."""
    script = _write_script(_common(key) + _WRK_TIMED.format(body="stream" if stream else "plain"))
    try:
        seconds = max(1, round(duration_s))
        argv = [wrk, "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), url]
        done = subprocess.run(pinned(CLIENT_CPU, argv), capture_output=True, text=True, timeout=duration_s + 120)
    finally:
        script.unlink(missing_ok=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    duration = data["duration_us"] / 1e6
    ok = data["requests"] - data["status"]
    return LoadResult(
        tool="wrk",
        clients=clients,
        requests=data["requests"],
        errors=errors,
        duration_s=duration,
        rps=ok / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        first_error=f"{data['status']} non-2xx/3xx responses" if data["status"] else None,
    )


def run_wrk_budget(
    wrk: str, url: str, clients: int, requests: int, mixed: bool, key: str = MASTER_KEY, timeout_s: float = 900
) -> LoadResult:
    """Send ``requests`` requests (every second one a stream when ``mixed``) and stop."""
    script = _write_script(_common(key) + _WRK_BUDGET.format(budget=requests, mixed="true" if mixed else "false"))
    started = time.perf_counter()
    try:
        argv = [wrk, "-t1", f"-c{clients}", f"-d{int(timeout_s)}s", "--timeout", "30s", "-s", str(script), url]
        done = subprocess.run(pinned(CLIENT_CPU, argv), capture_output=True, text=True, timeout=timeout_s + 60)
    finally:
        script.unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_BUDGET ")), None)
    if line is None:
        raise RuntimeError(f"wrk did not finish its budget ({done.returncode}): {done.stderr.strip()}")
    data = json.loads(line.removeprefix("BENCH_BUDGET "))
    return LoadResult(
        tool="wrk",
        clients=clients,
        requests=data["requests"],
        errors=data["bad"],
        duration_s=elapsed,
        rps=data["requests"] / elapsed,
        first_error=f"{data['bad']} non-200 responses" if data["bad"] else None,
    )


def run_python_load(
    url: str,
    clients: int,
    *,
    duration_s: float | None = None,
    requests: int | None = None,
    stream: bool = False,
    ramp_s: float = 0.0,
    processes: int = 1,
) -> LoadResult:
    """Run ``loadgen.py`` in its own (pinned) process and read its JSON line."""
    argv = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--concurrency", str(clients)]
    argv += ["--processes", str(processes), "--ramp", str(ramp_s)]
    if duration_s is not None:
        argv += ["--duration", str(duration_s)]
    if requests is not None:
        argv += ["--requests", str(requests)]
    if stream:
        argv.append("--stream")
    limit = ramp_s + (duration_s or 0) + (requests or 0) / 100 + 120
    done = subprocess.run(pinned(CLIENT_CPU, argv), capture_output=True, text=True, timeout=limit)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    data = json.loads(lines[-1])
    latency, ttft = data["latency_ms"], data["ttft_ms"]
    return LoadResult(
        tool="python",
        clients=clients,
        requests=data["requests"],
        errors=data["errors"],
        duration_s=data["duration_s"],
        rps=data["rps"],
        p50_ms=latency.get("p50"),
        p99_ms=latency.get("p99"),
        ttft_p50_ms=ttft.get("p50"),
        ttft_p99_ms=ttft.get("p99"),
        first_error=data["first_error"],
    )


def run_load(wrk: str | None, url: str, clients: int, duration_s: float, stream: bool) -> LoadResult:
    """A throughput cell: wrk when available, else the Python generator."""
    if wrk is not None:
        return run_wrk(wrk, url, clients, duration_s, stream)
    return run_python_load(url, clients, duration_s=duration_s, stream=stream)
