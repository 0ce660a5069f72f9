"""Gateway benchmark: Sira against the upstream direct and against the thinnest passthrough.

Run ``.venv/bin/python bench/gateway.py [--quick]``; see ``bench/README.md`` for what each number
means. Four scenarios, each a table with one row per target and client count:

* ``nonstream``: throughput and latency of ``chat.completion`` requests (upstream: nginx);
* ``stream``: the same for ``"stream": true`` (upstream: ``upstream_stream.py``, no pacing);
* ``ttft``: time to first token through the gateway, upstream pacing its chunks;
* ``leak``: resident memory after warm-up, after 10k and after 100k requests (half of them streams).

Targets: ``direct`` (the load generator talks to the upstream), ``passthrough``
(``passthrough.py``: starlette + the same upstream client as Sira) and ``sira``
(``sira serve`` with a master key and the default router). The server under test runs on CPU 0,
upstream and load generator on CPU 1 (taskset). Floors are printed beside the measurements.
Benchmarks print; they do not assert. Results also go to ``bench/results/`` as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canned import MASTER_KEY, MODEL, REQUEST, STREAM_REQUEST, UPSTREAM_KEY
from measure import LoadResult, find_wrk, run_load, run_python_load, run_wrk_budget
from procs import (
    CLIENT_CPU,
    GATEWAY_CPU,
    CpuWatch,
    Processes,
    Started,
    free_port,
    memory,
    pinned,
    pinning_available,
    wait_http_ok,
    wait_tcp,
)
from upstream_nginx import find_nginx, nginx_argv, write_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = ("direct", "passthrough", "sira")
#: Optional: Sira with the router plugin in front (``--targets ...,sira-router``), to measure what the
#: router adds over the kernel's default routing in the same run; and the passthrough relaying through an
#: httpx client over the aiohttp transport (``passthrough-httpx``, Sira's client before it sent
#: through aiohttp directly): what the httpx layers cost, for reference.
EXTRA_TARGETS = ("sira-router", "passthrough-httpx")
SCENARIOS = ("nonstream", "stream", "ttft", "leak")

SIRA_CONFIG = """\
[kernel]
plugins = ["api-openai", "provider-openai"{extra_plugins}]

[server]
master_key = "{master_key}"

[logging]
level = "warning"

[plugins.provider-openai]
base_url = "{upstream}"
api_key = "{upstream_key}"
models = ["{model}"]
"""


@dataclass
class Options:
    """What to run and for how long (see ``--help``)."""

    scenarios: tuple[str, ...]
    targets: tuple[str, ...]
    clients: tuple[int, ...]
    streams: tuple[int, ...]
    duration_s: float
    repeat: int
    warmup_s: float
    ttft_duration_s: float
    leak_counts: tuple[int, int]
    leak_warmup: int
    leak_clients: int
    chunks: int
    ttft_chunks: int
    pace_ms: float
    install: bool
    python_load: bool
    sira_cmd: list[str]
    results_dir: Path


@dataclass
class Upstream:
    """A running canned upstream; ``base_url`` ends in ``/v1`` like an OpenAI base URL."""

    label: str
    base_url: str
    process: Started

    @property
    def chat_url(self) -> str:
        return self.base_url + "/chat/completions"


@dataclass
class Target:
    """What the load generator talks to; ``process`` is whose memory is reported."""

    name: str
    url: str
    process: Started | None = None
    unavailable: str | None = None


@dataclass
class Cell:
    """One row of a table: a target at one client count, or why it could not be measured."""

    scenario: str
    target: str
    clients: int
    result: LoadResult | None = None
    rss_mb: float | None = None
    peak_mb: float | None = None
    noise_pct: float | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "result"}
        data["result"] = self.result.as_dict() if self.result else None
        return data


class Bench:
    """Starts upstreams and targets inside one :class:`Processes` and runs the scenarios."""

    def __init__(self, options: Options, procs: Processes, tmp: Path, wrk: str | None, nginx: str | None) -> None:
        self.options = options
        self.procs = procs
        self.tmp = tmp
        self.wrk = wrk
        self.nginx = nginx
        self.cells: list[Cell] = []
        self.cpu = CpuWatch(procs)
        self.upstream_labels: dict[str, str] = {}

    # -- upstreams -------------------------------------------------------------------------------

    def start_nginx(self) -> Upstream:
        """nginx serving the canned JSON; the Python upstream when nginx is not available."""
        if self.nginx is None:
            return self.start_python_upstream(self.options.chunks, 0.0)
        port = free_port()
        prefix = self.tmp / f"nginx-{port}"
        conf = write_config(prefix, port)
        process = self.procs.start(f"nginx-{port}", pinned(CLIENT_CPU, nginx_argv(self.nginx, prefix, conf)))
        wait_tcp(port, process)
        return Upstream("nginx", f"http://127.0.0.1:{port}/v1", process)

    def start_python_upstream(self, chunks: int, pace_ms: float) -> Upstream:
        port = free_port()
        argv = [sys.executable, str(HERE / "upstream_stream.py"), "--port", str(port)]
        argv += ["--chunks", str(chunks), "--pace-ms", str(pace_ms)]
        process = self.procs.start(f"upstream-{port}", pinned(CLIENT_CPU, argv))
        wait_tcp(port, process)
        label = f"upstream_stream.py ({chunks} chunks" + (f", {pace_ms:g} ms apart)" if pace_ms else ", unpaced)")
        return Upstream(label, f"http://127.0.0.1:{port}/v1", process)

    # -- targets ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def target(self, name: str, upstream: Upstream, stream: bool) -> Iterator[Target]:
        """Start ``name`` in front of ``upstream``, check one request, yield it, stop it."""
        if name == "direct":
            target = Target(name, upstream.chat_url, upstream.process)
            target.unavailable = smoke(target.url, stream)
            yield target
            return
        port = free_port()
        if name.startswith("passthrough"):
            argv = [sys.executable, str(HERE / "passthrough.py"), "--port", str(port)]
            argv += ["--upstream", upstream.base_url]
            if name == "passthrough-httpx":
                argv += ["--client", "httpx"]
        else:
            config = self.tmp / f"sira-{port}.toml"
            config.write_text(
                SIRA_CONFIG.format(
                    master_key=MASTER_KEY, upstream=upstream.base_url, upstream_key=UPSTREAM_KEY, model=MODEL,
                    extra_plugins=', "router"' if name == "sira-router" else "",
                )
            )
            argv = [*self.options.sira_cmd, "serve", "--config", str(config), "--host", "127.0.0.1"]
            argv += ["--port", str(port)]
        process: Started | None = None
        target = Target(name, f"http://127.0.0.1:{port}/v1/chat/completions")
        try:
            if name.startswith("sira") and not shutil.which(self.options.sira_cmd[0]):
                target.unavailable = f"{self.options.sira_cmd[0]} not found"
            else:
                process = self.procs.start(f"{name}-{port}", pinned(GATEWAY_CPU, argv))
                target.process = process
                try:
                    if name.startswith("sira"):
                        wait_http_ok(f"http://127.0.0.1:{port}/health/live", process)
                    else:
                        wait_tcp(port, process)
                except RuntimeError as exc:
                    target.unavailable = str(exc)
                else:
                    target.unavailable = smoke(target.url, stream)
            yield target
        finally:
            if process is not None:
                self.procs.stop(process)

    def warm_up(self, target: Target, stream: bool) -> None:
        """Load the target for ``--warmup`` seconds (JIT-free Python still fills caches and pools)."""
        if self.options.warmup_s > 0:
            run_load(self.wrk, target.url, max(self.options.clients), self.options.warmup_s, stream)

    # -- scenarios -------------------------------------------------------------------------------

    def throughput(self, scenario: str, upstream: Upstream, stream: bool) -> None:
        """Requests per second and latency at each client count, for each target."""
        self.upstream_labels[scenario] = upstream.label
        for name in self.options.targets:
            with self.target(name, upstream, stream) as target:
                if target.unavailable:
                    self.unavailable(scenario, target, self.options.clients)
                    continue
                self.warm_up(target, stream)
                for clients in self.options.clients:
                    cell = Cell(scenario, name, clients)
                    self.measure(
                        cell,
                        target,
                        functools.partial(run_load, self.wrk, target.url, clients, self.options.duration_s, stream),
                        repeat=self.options.repeat,
                    )

    def ttft(self, upstream: Upstream) -> None:
        """Time to first ``data:`` chunk at each stream count, for each target."""
        self.upstream_labels["ttft"] = upstream.label
        # Start the clients spread over one stream's length so that they do not open their streams
        # in lockstep (events: role, the chunks, finish, [DONE]; one pace between each two).
        ramp = (self.options.ttft_chunks + 2) * self.options.pace_ms / 1000
        for name in self.options.targets:
            with self.target(name, upstream, stream=True) as target:
                if target.unavailable:
                    self.unavailable("ttft", target, self.options.streams)
                    continue
                if self.options.warmup_s > 0:
                    run_python_load(target.url, 10, duration_s=self.options.warmup_s, stream=True)
                for streams in self.options.streams:
                    cell = Cell("ttft", name, streams)
                    self.measure(
                        cell,
                        target,
                        functools.partial(
                            run_python_load,
                            target.url,
                            streams,
                            duration_s=self.options.ttft_duration_s,
                            stream=True,
                            ramp_s=ramp,
                        ),
                    )

    def leak(self, upstream: Upstream) -> None:
        """Memory after warm-up, after the first and the second request count (half streams)."""
        self.upstream_labels["leak"] = upstream.label
        first, second = self.options.leak_counts
        clients = self.options.leak_clients
        for name in self.options.targets:
            if name == "direct":
                continue  # the upstream's memory says nothing about a gateway
            with self.target(name, upstream, stream=True) as target:
                if target.unavailable:
                    self.unavailable("leak", target, (clients,))
                    continue
                assert target.process is not None
                cell = Cell("leak", name, clients)
                try:
                    self.send(target, clients, self.options.leak_warmup)
                    after_warmup = memory(target.process.pid)
                    first_result, first_noise = self.watched(lambda: self.send(target, clients, first))
                    after_first = memory(target.process.pid)
                    second_result, second_noise = self.watched(lambda: self.send(target, clients, second - first))
                    after_second = memory(target.process.pid)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    cell.note = f"failed: {exc}"
                    self.cells.append(cell)
                    continue
                cell.result = second_result
                cell.noise_pct = max((n for n in (first_noise, second_noise) if n is not None), default=None)
                cell.rss_mb, cell.peak_mb = after_second.rss_mb, after_second.peak_mb
                cell.extra = {
                    "rss_after_warmup_mb": after_warmup.rss_mb,
                    "rss_after_first_mb": after_first.rss_mb,
                    "rss_after_second_mb": after_second.rss_mb,
                    "first_count": first,
                    "second_count": second,
                    "errors": first_result.errors + second_result.errors,
                    "rps": (first_result.requests + second_result.requests)
                    / (first_result.duration_s + second_result.duration_s),
                }
                self.cells.append(cell)

    def send(self, target: Target, clients: int, requests: int) -> LoadResult:
        """Send ``requests`` requests, every second one a stream."""
        if requests <= 0:
            return LoadResult("none", clients, 0, 0, 0.0, 0.0)
        if self.wrk is not None:
            return run_wrk_budget(self.wrk, target.url, clients, requests, mixed=True)
        half = requests // 2
        plain = run_python_load(target.url, clients, requests=requests - half)
        streamed = run_python_load(target.url, clients, requests=half, stream=True)
        return LoadResult(
            "python",
            clients,
            plain.requests + streamed.requests,
            plain.errors + streamed.errors,
            plain.duration_s + streamed.duration_s,
            (plain.requests + streamed.requests) / (plain.duration_s + streamed.duration_s),
        )

    # -- bookkeeping -----------------------------------------------------------------------------

    def measure(self, cell: Cell, target: Target, run: Callable[[], LoadResult], repeat: int = 1) -> None:
        """Run one cell (``repeat`` times, keeping the run with the median req/s) and record it."""
        try:
            runs = sorted((self.watched(run) for _ in range(max(1, repeat))), key=lambda pair: pair[0].rps)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            cell.note = f"failed: {exc}"
        else:
            cell.result, cell.noise_pct = runs[len(runs) // 2]
            if len(runs) > 1:
                cell.extra["runs"] = [{"rps": round(r.rps, 1), "noise_pct": noise} for r, noise in runs]
        if target.process is not None:
            mem = memory(target.process.pid)
            cell.rss_mb, cell.peak_mb = mem.rss_mb, mem.peak_mb
        if cell.result and cell.result.errors:
            cell.note = f"{cell.result.errors} errors ({cell.result.first_error})"
        self.cells.append(cell)
        unit = "streams" if cell.scenario == "ttft" else "clients"
        print(f"  {cell.scenario:<9} {cell.target:<12} {cell.clients:>4} {unit}: {brief(cell)}", flush=True)

    def watched(self, run: Callable[[], LoadResult]) -> tuple[LoadResult, float | None]:
        """``run()`` and the CPU share other work on the machine took meanwhile (see CpuWatch)."""
        self.cpu.start()
        result = run()
        return result, self.cpu.stop()

    def unavailable(self, scenario: str, target: Target, counts: tuple[int, ...]) -> None:
        reason = (target.unavailable or "").strip().replace("\n", " | ")
        print(f"  {scenario:<9} {target.name:<12} not available: {reason[:300]}", flush=True)
        for clients in counts:
            self.cells.append(Cell(scenario, target.name, clients, note=f"not available: {reason}"))

    def run(self) -> None:
        """Run the selected scenarios, each with a fresh upstream."""
        steps: dict[str, Callable[[], None]] = {
            "nonstream": lambda: self.throughput("nonstream", self.start_nginx(), stream=False),
            "stream": lambda: self.throughput(
                "stream", self.start_python_upstream(self.options.chunks, 0.0), stream=True
            ),
            "ttft": lambda: self.ttft(self.start_python_upstream(self.options.ttft_chunks, self.options.pace_ms)),
            "leak": lambda: self.leak(self.start_python_upstream(self.options.chunks, 0.0)),
        }
        for scenario in self.options.scenarios:
            print(f"[{scenario}]", flush=True)
            try:
                steps[scenario]()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                # An upstream that does not start, or a load generator that fails outside a cell.
                print(f"  {scenario} failed: {exc}", flush=True)
            finally:
                self.procs.stop_all()  # the scenario's upstream


def smoke(url: str, stream: bool) -> str | None:
    """Send one request; return why the answer is unusable, or None when it looks right."""
    request = urllib.request.Request(
        url,
        data=STREAM_REQUEST if stream else REQUEST,
        headers={"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"smoke request answered {exc.code}: {exc.read()[:200]!r}"
    except OSError as exc:
        return f"smoke request failed: {exc!r}"
    expected = b"data: [DONE]" if stream else b'"chat.completion"'
    if status != 200 or expected not in body:
        return f"smoke request answered {status} without {expected.decode()}: {body[:200]!r}"
    return None


# -- reporting -------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def brief(cell: Cell) -> str:
    r = cell.result
    if r is None:
        return cell.note or "-"
    text = f"{r.rps:,.0f} req/s, p50 {fmt(r.p50_ms)} ms, p99 {fmt(r.p99_ms)} ms"
    if r.ttft_p50_ms is not None:
        text += f", TTFT p50 {fmt(r.ttft_p50_ms)} ms p99 {fmt(r.ttft_p99_ms)} ms"
    text += f", peak RSS {fmt(cell.peak_mb, 1)} MB, noise {fmt(cell.noise_pct, 0)}%"
    return text + (f" [{cell.note}]" if cell.note else "")


#: Above this share of one CPU taken by other work during a cell, its numbers are suspect.
NOISY_PCT = 10.0


def noise(cell: Cell) -> str:
    if cell.noise_pct is None:
        return "-"
    return f"{cell.noise_pct:.0f}%" + ("!" if cell.noise_pct > NOISY_PCT else "")


TITLES = {
    "nonstream": "Non-streaming chat completions",
    "stream": "Streaming chat completions (latency = to the end of the stream)",
    "ttft": "Time to first token (first SSE data: chunk)",
    "leak": "Memory over many requests (half of them streams)",
}


def table(bench: Bench, scenario: str) -> list[str]:
    cells = [c for c in bench.cells if c.scenario == scenario]
    if not cells:
        return []
    lines = [f"{TITLES[scenario]} -- upstream: {bench.upstream_labels.get(scenario, '?')}"]
    if scenario == "leak":
        first, second = bench.options.leak_counts
        head = f"{'target':<12} {'clients':>7} {'warm-up MB':>10} {f'{first:,} MB':>10} {f'{second:,} MB':>10}"
        lines.append(head + f" {'growth':>7} {'peak MB':>8} {'req/s':>8} {'noise':>6}  note")
        for c in cells:
            if c.result is None:
                lines.append(f"{c.target:<12} {c.clients:>7} {c.note}")
                continue
            e = c.extra
            growth = (e["rss_after_second_mb"] / e["rss_after_first_mb"] - 1) * 100
            lines.append(
                f"{c.target:<12} {c.clients:>7} {fmt(e['rss_after_warmup_mb'], 1):>10} "
                f"{fmt(e['rss_after_first_mb'], 1):>10} {fmt(e['rss_after_second_mb'], 1):>10} {growth:>6.1f}% "
                f"{fmt(c.peak_mb, 1):>8} {e['rps']:>8,.0f} {noise(c):>6}  {c.note or ''}"
            )
        return lines
    ttft = scenario == "ttft"
    head = f"{'target':<12} {'streams' if ttft else 'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    if ttft:
        head += f" {'TTFT p50':>9} {'TTFT p99':>9}"
    lines.append(head + f" {'peak RSS MB':>11} {'errors':>6} {'noise':>6}  note")
    for c in cells:
        r = c.result
        if r is None:
            lines.append(f"{c.target:<12} {c.clients:>7} {c.note}")
            continue
        row = f"{c.target:<12} {c.clients:>7} {r.rps:>9,.0f} {fmt(r.p50_ms):>8} {fmt(r.p99_ms):>8}"
        if ttft:
            row += f" {fmt(r.ttft_p50_ms):>9} {fmt(r.ttft_p99_ms):>9}"
        lines.append(row + f" {fmt(c.peak_mb, 1):>11} {r.errors:>6} {noise(c):>6}  {c.note or ''}")
    return lines


@dataclass
class Floor:
    """One ratio line: a measured value against its floor."""

    label: str
    value: float | None
    unit: str
    floor: str
    passed: bool | None  # None: nothing to judge (not measured, or a reference line)

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a" if self.floor else ""}[self.passed]
        value = "not measured" if self.value is None else f"{self.value:,.2f}{self.unit}"
        return f"{self.label:<58} {value:>14}  {self.floor:<14} {verdict}"


def floors(bench: Bench) -> list[Floor]:
    """The floors from the issue, each evaluated on what was measured."""

    def cell(scenario: str, target: str, clients: int) -> LoadResult | None:
        for c in bench.cells:
            if (c.scenario, c.target, c.clients) == (scenario, target, clients) and c.result and not c.note:
                return c.result
        return None

    def get(scenario: str, target: str, clients: int, attr: str) -> float | None:
        result = cell(scenario, target, clients)
        return None if result is None else getattr(result, attr)

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    def check(value: float | None, ok: Callable[[float], bool]) -> bool | None:
        return None if value is None else ok(value)

    out: list[Floor] = []
    many, one = max(bench.options.clients), min(bench.options.clients)
    for scenario in ("nonstream", "stream"):
        sira, thin = get(scenario, "sira", many, "rps"), get(scenario, "passthrough", many, "rps")
        ratio = None if sira is None or not thin else sira / thin
        out.append(
            Floor(
                f"{scenario}: sira / passthrough req/s at {many} clients",
                ratio,
                "x",
                ">= 0.8x",
                check(ratio, lambda v: v >= 0.8),
            )
        )
        heavier = get(scenario, "passthrough-httpx", many, "rps")
        if heavier:  # reference only: the yardstick is the passthrough with Sira's own client
            out.append(Floor(f"{scenario}: sira / passthrough-httpx req/s at {many} clients",
                             None if sira is None else sira / heavier, "x", "", None))
    sira_rps = get("nonstream", "sira", many, "rps")
    routed = get("nonstream", "sira-router", many, "rps")
    if routed and sira_rps:
        # The gateway's core is saturated at this load, so 1/req/s is its CPU time per request.
        added_us = 1e6 / routed - 1e6 / sira_rps
        out.append(Floor(f"nonstream: router adds (sira-router vs sira) at {many} clients", added_us, " us",
                         "< 30 us", check(added_us, lambda v: v < 30)))
    out.append(
        Floor(
            f"nonstream: sira req/s at {many} clients", sira_rps, "", ">= 2,000", check(sira_rps, lambda v: v >= 2000)
        )
    )
    for target in ("sira", "passthrough"):
        added = diff(get("nonstream", target, one, "p50_ms"), get("nonstream", "direct", one, "p50_ms"))
        floor = "< 0.6 ms" if target == "sira" else ""
        out.append(
            Floor(
                f"nonstream: {target} - direct p50 at {one} client",
                added,
                " ms",
                floor,
                check(added, lambda v: v < 0.6) if target == "sira" else None,
            )
        )
    few, crowd = min(bench.options.streams), max(bench.options.streams)
    for target in ("sira", "passthrough"):
        for streams, stat, limit in ((few, "p50", 1.0), (few, "p99", None), (crowd, "p50", None), (crowd, "p99", 50.0)):
            attr = f"ttft_{stat}_ms"
            added = diff(get("ttft", target, streams, attr), get("ttft", "direct", streams, attr))
            judged = target == "sira" and limit is not None
            out.append(
                Floor(
                    f"ttft: {target} - direct TTFT {stat} at {streams} stream{'s' if streams > 1 else ''}",
                    added,
                    " ms",
                    f"< {limit:g} ms" if judged else "",
                    None if added is None or limit is None or not judged else added < limit,
                )
            )
    sira_peaks = [c.peak_mb for c in bench.cells if c.target == "sira" and c.peak_mb is not None]
    peak = max(sira_peaks) if sira_peaks else None
    out.append(Floor("sira: peak RSS over all scenarios", peak, " MB", "< 120 MB", check(peak, lambda v: v < 120)))
    first, second = bench.options.leak_counts
    for target in ("sira", "passthrough"):
        leak = next((c for c in bench.cells if c.scenario == "leak" and c.target == target and c.result), None)
        growth = None
        if leak is not None:
            growth = (leak.extra["rss_after_second_mb"] / leak.extra["rss_after_first_mb"] - 1) * 100
        judged = target == "sira"
        out.append(
            Floor(
                f"leak: {target} RSS growth {first:,} -> {second:,} requests",
                growth,
                "%",
                "< 10%" if judged else "",
                check(growth, lambda v: v < 10) if judged else None,
            )
        )
    return out


def environment(bench: Bench) -> dict[str, Any]:
    def version(argv: list[str]) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        return None

    commit = version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "pinning": pinning_available(),
        "wrk": version([bench.wrk, "-v"]) if bench.wrk else None,
        "nginx": version([bench.nginx, "-v"]) if bench.nginx else None,
        "git_commit": commit,
    }


def report(bench: Bench) -> list[str]:
    lines: list[str] = []
    for scenario in SCENARIOS:
        block = table(bench, scenario)
        if block:
            lines += ["", *block]
    noisy = [c for c in bench.cells if c.noise_pct is not None and c.noise_pct > NOISY_PCT]
    if noisy:
        lines += [
            "",
            f"warning: other work took over {NOISY_PCT:.0f}% of a CPU during {len(noisy)} cell(s) (marked !);"
            " their numbers are unreliable: rerun on a quiet machine"
            + (" or with --repeat 3" if bench.options.repeat == 1 else ""),
        ]
    lines += ["", "Floors (sira) and references (passthrough)"]
    lines += [floor.line() for floor in floors(bench)]
    return lines


# -- command line ----------------------------------------------------------------------------------


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, leak counts 2k/10k (about 2 minutes)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of %(default)s")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of %(default)s")
    parser.add_argument("--clients", default="1,16", help="concurrent clients per throughput cell")
    parser.add_argument("--streams", default="1,100", help="concurrent streams per TTFT cell")
    parser.add_argument("--duration", type=float, help="seconds per throughput cell (default 5, quick 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per throughput cell; the median is kept")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per target (default 2, quick 1)")
    parser.add_argument("--ttft-duration", type=float, help="seconds per TTFT cell (default 10, quick 3)")
    parser.add_argument("--leak-counts", help="requests at the two memory readings (default 10000,100000)")
    parser.add_argument("--leak-clients", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream (throughput)")
    parser.add_argument("--ttft-chunks", type=int, default=10, help="content chunks per stream (TTFT)")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="upstream delay between chunks (TTFT)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install nginx or wrk")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator, not wrk")
    parser.add_argument("--sira-cmd", help="command starting Sira (default: the venv's sira)")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    def ints(text: str) -> tuple[int, ...]:
        return tuple(int(x.replace("_", "").replace("k", "000")) for x in text.split(",") if x)

    def names(text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        chosen = tuple(x.strip() for x in text.split(",") if x.strip())
        unknown = set(chosen) - set(allowed)
        if unknown:
            parser.error(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(allowed)}")
        return tuple(x for x in allowed if x in chosen)

    leak = ints(args.leak_counts or ("2000,10000" if args.quick else "10000,100000"))
    if len(leak) != 2 or not 0 < leak[0] < leak[1]:
        parser.error("--leak-counts takes two increasing counts, e.g. 10000,100000")
    sira = Path(sys.executable).parent / "sira"
    return Options(
        scenarios=names(args.scenarios, SCENARIOS),
        targets=names(args.targets, TARGETS + EXTRA_TARGETS),
        clients=ints(args.clients),
        streams=ints(args.streams),
        duration_s=args.duration or (2.0 if args.quick else 5.0),
        repeat=args.repeat,
        warmup_s=args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0),
        ttft_duration_s=args.ttft_duration or (3.0 if args.quick else 10.0),
        leak_counts=(leak[0], leak[1]),
        leak_warmup=500 if args.quick else 2000,
        leak_clients=args.leak_clients,
        chunks=args.chunks,
        ttft_chunks=args.ttft_chunks,
        pace_ms=args.pace_ms,
        install=not args.no_install,
        sira_cmd=args.sira_cmd.split() if args.sira_cmd else [str(sira if sira.exists() else "sira")],
        results_dir=args.results_dir,
        python_load=args.python_load,
    )


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # `kill` cleans up like Ctrl-C
    nginx = find_nginx(options.install) if "nonstream" in options.scenarios else None
    wrk = None if options.python_load else find_wrk(options.install)
    pinning = f"gateway on CPU {GATEWAY_CPU}, upstream + load on CPU {CLIENT_CPU}" if pinning_available() else "off"
    print(f"pinning: {pinning}")
    if "nonstream" in options.scenarios:
        print(f"upstream (non-stream): {nginx or 'upstream_stream.py (nginx not available)'}")
    print(f"load generator: {wrk or 'loadgen.py (wrk not available)'}; TTFT: loadgen.py")
    started = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="sira-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        with Processes(tmp) as procs:
            bench = Bench(options, procs, tmp, wrk, nginx)
            try:
                bench.run()
            except KeyboardInterrupt:
                print("\ninterrupted: stopping everything and reporting what was measured", file=sys.stderr)
    lines = report(bench)
    print("\n".join(lines))
    options.results_dir.mkdir(parents=True, exist_ok=True)
    out = options.results_dir / f"gateway-{started}.json"
    out.write_text(
        json.dumps(
            {
                "started": started,
                "environment": environment(bench),
                "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.__dict__.items()},
                "upstreams": bench.upstream_labels,
                "cells": [c.as_dict() for c in bench.cells],
                "floors": [f.__dict__ for f in floors(bench)],
            },
            indent=2,
        )
    )
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
