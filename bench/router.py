"""What the router adds to a request: µs per routed request with ``sira-router`` vs the kernel's default.

In-process, no HTTP: 16 concurrent tasks each call ``kernel.pipeline.chat`` in a loop against
``FakeProviderPlugin`` providers (which answer at once), so the time per request is the gateway's
own CPU cost. Each configuration is a fresh kernel:

* **default**: the kernel's default routing (``sira_route`` answered by the kernel, one attempt);
* **router, 1 deployment**: a group with one member (weighted);
* **router, 4 deployments + 8 rules**: weighted over four providers, with eight rules loaded (four
  indexed under other models, four that apply to any model and fail on their tenant condition);
* **router, latency strategy**: power of two choices over four providers (EWMA updates on every
  report);
* **router, unlisted model**: a model in no group, routed through an implicit group.

Every router configuration is timed ``--reps`` times, each run right after a run of the default,
so load from elsewhere on the machine hits both halves of a pair alike. ``µs/request`` is the
median per configuration; ``added`` is the median of the paired differences, beside the issue's
floor (the router adds under 30 µs per request at 16 clients) with PASS/FAIL. A last line times
the router alone: ``route()`` + ``plan.next()`` + ``plan.report()`` called directly.

    python bench/router.py            # uvloop when installed
    python bench/router.py --loop asyncio --quick
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import time
from typing import Any

import anyio
import msgspec
from sira_router import Router, RouterConfig, RouterPlugin

from loops import add_loop_option, run
from sira_kernel import ChatRequest, Message, Principal, RequestInfo
from sira_kernel.kernel import Kernel
from sira_kernel.logs import configure_logging
from sira_kernel.testing import FakeProviderPlugin, make_kernel

FLOOR_US = 30.0
CLIENTS = 16
PROVIDERS = ("p1", "p2", "p3", "p4")


class Sizes(msgspec.Struct):
    reps: int = 15
    per_client: int = 500
    direct_ops: int = 50_000


QUICK = Sizes(reps=5, per_client=250, direct_ops=10_000)

RULES = [
    *[{"name": f"indexed-{i}", "target": "bench", "when": {"models": [f"other-{i}"]}} for i in range(4)],
    *[{"name": f"any-{i}", "target": "bench", "when": {"tenants": [f"tenant-{i}"]}} for i in range(4)],
]


def _group(strategy: str, providers: tuple[str, ...]) -> dict[str, Any]:
    return {"strategy": strategy, "deployments": [{"provider": p, "model": "fake-1"} for p in providers]}


CONFIGS: dict[str, tuple[str, dict[str, Any] | None, tuple[str, ...]]] = {
    # label: (model asked for, router section or None for no router, providers)
    "default (kernel routing)": ("fake-1", None, ("p1",)),
    "router, 1 deployment": ("bench", {"groups": {"bench": _group("weighted", ("p1",))}}, ("p1",)),
    "router, 4 deployments + 8 rules": (
        "bench", {"groups": {"bench": _group("weighted", PROVIDERS)}, "rules": RULES}, PROVIDERS),
    "router, latency strategy": ("bench", {"groups": {"bench": _group("latency", PROVIDERS)}}, PROVIDERS),
    "router, unlisted model": ("fake-1", {"groups": {}}, ("p1",)),
}


def build(router: dict[str, Any] | None, providers: tuple[str, ...]) -> Kernel:
    plugins: dict[str, Any] = {name: FakeProviderPlugin for name in providers}
    config: dict[str, Any] = {"plugins": {name: {"models": ["fake-1"]} for name in providers}}
    if router is not None:
        plugins["router"] = RouterPlugin
        config["plugins"]["router"] = router
    return make_kernel(plugins, config=config)


async def per_request_us(kernel: Kernel, model: str, per_client: int) -> float:
    """Wall-clock µs per request with CLIENTS tasks each sending ``per_client`` requests."""
    chat = kernel.pipeline.chat
    request = ChatRequest(model=model, messages=[Message("user", "Say hello")])

    async def client() -> None:
        for _ in range(per_client):
            await chat(request, RequestInfo(method="POST", path="/v1/chat/completions", headers={}))

    gc.collect()
    started = time.perf_counter_ns()
    async with anyio.create_task_group() as tasks:
        for _ in range(CLIENTS):
            tasks.start_soon(client)
    return (time.perf_counter_ns() - started) / (CLIENTS * per_client) / 1000


async def bench_pipeline(sizes: Sizes) -> tuple[dict[str, float], dict[str, float]]:
    """Median µs per request of each configuration, and the median of its paired differences
    with the default (each router run is timed right after a default run, so load from elsewhere
    on the machine hits both halves of a pair alike)."""
    kernels = {label: build(router, providers) for label, (_, router, providers) in CONFIGS.items()}
    samples: dict[str, list[float]] = {label: [] for label in CONFIGS}
    added: dict[str, list[float]] = {label: [] for label in CONFIGS if CONFIGS[label][1] is not None}
    default = next(label for label, config in CONFIGS.items() if config[1] is None)
    for kernel in kernels.values():
        await kernel.__aenter__()
    try:
        for label, kernel in kernels.items():  # warm-up
            await per_request_us(kernel, CONFIGS[label][0], max(10, sizes.per_client // 5))
        for _ in range(sizes.reps):
            for label in added:
                base = await per_request_us(kernels[default], CONFIGS[default][0], sizes.per_client)
                value = await per_request_us(kernels[label], CONFIGS[label][0], sizes.per_client)
                samples[default].append(base)
                samples[label].append(value)
                added[label].append(value - base)
        for label in added:
            router = kernels[label].plugins.handles["router"].instance.router
            outcomes = {d.outcome for d in router.decision_log(100)}
            assert outcomes == {"ok"}, (label, outcomes)
    finally:
        for kernel in reversed(list(kernels.values())):
            await kernel.__aexit__(None, None, None)
    medians = {label: statistics.median(values) for label, values in samples.items()}
    return medians, {label: statistics.median(values) for label, values in added.items()}


async def bench_direct(sizes: Sizes) -> float:
    """µs for route() + next() + report() on the router alone (4 deployments, weighted, 8 rules)."""
    from sira_kernel import RouteTable
    from sira_kernel.testing import FakeProvider

    config = msgspec.convert({"groups": {"bench": _group("weighted", PROVIDERS)}, "rules": RULES}, RouterConfig)
    router = Router(config)
    routes = RouteTable({name: FakeProvider(name, ["fake-1"]) for name in PROVIDERS})
    request = ChatRequest(model="bench", messages=[Message("user", "Say hello")])
    principal = Principal(id="bench", kind="key", tenant="bench")

    async def run(n: int) -> None:
        for _ in range(n):
            route = router.route(request, principal, routes)
            plan = route.plan  # type: ignore[union-attr]
            deployment = await plan.next(None, 600.0)
            plan.report(deployment, None, 0.001, None)

    await run(sizes.direct_ops // 5)
    samples = []
    for _ in range(sizes.reps):
        gc.collect()
        started = time.perf_counter_ns()
        await run(sizes.direct_ops)
        samples.append((time.perf_counter_ns() - started) / sizes.direct_ops / 1000)
    return statistics.median(samples)


def describe_loop() -> str:
    loop = asyncio.get_running_loop()
    kind = type(loop)
    if kind.__module__.startswith("uvloop"):
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return "asyncio"


async def main(sizes: Sizes) -> None:
    loop = describe_loop()
    print(f"Sira router overhead: Python {platform.python_version()}, event loop {loop}, {CLIENTS} concurrent "
          f"clients x {sizes.per_client} requests, median of {sizes.reps} paired repetitions\n")
    medians, added_by = await bench_pipeline(sizes)
    direct = await bench_direct(sizes)
    width = max(len(label) for label in medians) + 2
    print(f"{'configuration':<{width}}  {'µs/request':>10}  {'added':>9}  {'floor':<9}  result")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 9}  {'-' * 9}  ------")
    failed = []
    for label, value in medians.items():
        if label.startswith("default"):
            print(f"{label:<{width}}  {value:>10.2f}  {'':>9}  {'':<9}")
            continue
        added = added_by[label]
        passed = added < FLOOR_US
        if not passed:
            failed.append(label)
        print(f"{label:<{width}}  {value:>10.2f}  {added:>+9.2f}  {'< ' + format(FLOOR_US, 'g') + ' µs':<9}  "
              f"{'PASS' if passed else 'FAIL'}")
    print(f"{'router alone: route+next+report':<{width}}  {direct:>10.2f}  {'':>9}  {'reference':<9}")
    print(f"\n{'all floors met' if not failed else 'FAILED: ' + '; '.join(failed)} (event loop: {loop})")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loop_option(parser)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--reps", type=int, help="repetitions (median reported)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    if args.reps:
        sizes = msgspec.structs.replace(sizes, reps=args.reps)
    configure_logging(level="warning")  # plugin lifecycle lines would interleave with the table
    run(main, sizes, loop=args.loop)


if __name__ == "__main__":
    cli()
