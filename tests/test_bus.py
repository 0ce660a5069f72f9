"""The message bus: topics, wildcards, bounded queues and their overflow policies, isolation between
subscribers, request/reply, and the subscriptions plugins register through the kernel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sira_kernel.auth import RequestInfo
from sira_kernel.bus import MessageBus, Subscription, topic_matches
from sira_kernel.errors import BusTimeout, SiraError
from sira_kernel.events import PluginEvent, UsageRecord
from sira_kernel.hookspecs import hookimpl
from sira_kernel.registrations import SubscriptionRegistrar
from sira_kernel.testing import FakeProviderPlugin, make_kernel
from sira_kernel.types import ChatRequest, Message

# -- helpers --------------------------------------------------------------------------------------


class Ping(msgspec.Struct):
    topic: ClassVar[str] = "test.ping"
    n: int


class Untopical(msgspec.Struct):
    n: int


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to other tasks until ``predicate()`` holds (fails the test after ``timeout``)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0)


@asynccontextmanager
async def delivering(bus: MessageBus, *subscriptions: Subscription) -> AsyncIterator[None]:
    """Add the subscriptions with their delivery loops running; on exit remove them and wait for the
    loops to drain what is queued."""
    async with anyio.create_task_group() as tasks:
        for sub in subscriptions:
            bus.add(sub)
            tasks.start_soon(sub.run)
        yield
        for sub in subscriptions:
            bus.remove(sub)


def numbers(events: list[Any]) -> list[int]:
    return [e.n for e in events]


# -- topics ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_event_topic_comes_from_its_classvar() -> None:
    bus = MessageBus()
    pings: list[Ping] = []
    others: list[Any] = []
    async with delivering(bus, Subscription("p", "test.ping", pings.append), Subscription("o", "other", others.append)):
        bus.publish_nowait(Ping(1))
        await bus.publish(Ping(2))
    assert numbers(pings) == [1, 2]
    assert others == []
    assert bus.published == 2


@pytest.mark.anyio
async def test_explicit_topic_overrides_the_classvar() -> None:
    bus = MessageBus()
    by_class: list[Any] = []
    custom: list[Any] = []
    subs = Subscription("c", "test.ping", by_class.append), Subscription("x", "custom.*", custom.append)
    async with delivering(bus, *subs):
        bus.publish_nowait(Ping(1), topic="custom.a")
        await bus.publish(Untopical(2), topic="custom.b")
    assert by_class == []
    assert [type(e) for e in custom] == [Ping, Untopical]
    assert numbers(custom) == [1, 2]


def test_an_event_without_a_topic_needs_one_passed() -> None:
    bus = MessageBus()
    with pytest.raises(TypeError, match="no topic ClassVar"):
        bus.publish_nowait(Untopical(1))


MATCHES = [
    ("a.b", "a.b", True),
    ("a.b", "a.c", False),
    ("a", "a.b", False),
    ("a.b", "a", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*.b", "a.b", True),
    ("*.*", "a.b", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.c", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b.a", False),
    ("#.c", "c", True),
    ("#.c", "a.b.c", True),
    ("#.c", "a.b", False),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.x.y.c", True),
    ("a.#.c", "a.x.y", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("#.#", "a", True),
    ("#.*", "a.b", True),
    ("#.*", "a", True),
    ("usage.#", "usage.request", True),
    ("usage.*", "usage.request", True),
    ("plugin.*", "plugin.active", True),
    ("plugin.*", "plugins.active", False),
    ("plugin.*", "plugin", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCHES)
def test_topic_matches_table(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


def reference_match(pattern: str, topic: str) -> bool:
    """A deliberately different algorithm: simulate the pattern as an NFA over topic positions."""
    segments = topic.split(".")
    positions = {0}
    for part in pattern.split("."):
        following: set[int] = set()
        for i in positions:
            if part == "#":
                following.update(range(i, len(segments) + 1))
            elif i < len(segments) and part in ("*", segments[i]):
                following.add(i + 1)
        positions = following
    return len(segments) in positions


@settings(max_examples=400, deadline=None)
@given(
    pattern=st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=6).map(".".join),
    topic=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=6).map(".".join),
)
def test_topic_matches_agrees_with_a_reference(pattern: str, topic: str) -> None:
    assert topic_matches(pattern, topic) is reference_match(pattern, topic)


# -- overflow policies and counters ------------------------------------------------------------------
# The delivery loop is not running while the queue fills, so its depth is known exactly.


def test_drop_oldest_keeps_the_newest() -> None:
    bus = MessageBus()
    dropped: list[Ping] = []
    sub = Subscription("s", "test.#", lambda e: None, queue_size=4, overflow="drop_oldest", on_drop=dropped.append)
    bus.add(sub)
    for n in range(10):
        bus.publish_nowait(Ping(n))
    assert numbers(list(sub._queue)) == [6, 7, 8, 9]
    assert numbers(dropped) == [0, 1, 2, 3, 4, 5]
    stats = sub.stats()
    assert (stats.queued, stats.dropped, stats.high_water, stats.delivered, stats.errors) == (4, 6, 4, 0, 0)
    # events 2..9 each found the queue at least half full (2 of 4)
    assert stats.lagged == 8


def test_drop_newest_keeps_the_oldest() -> None:
    bus = MessageBus()
    dropped: list[Ping] = []
    sub = Subscription("s", "test.#", lambda e: None, queue_size=4, overflow="drop_newest", on_drop=dropped.append)
    bus.add(sub)
    for n in range(10):
        bus.publish_nowait(Ping(n))
    assert numbers(list(sub._queue)) == [0, 1, 2, 3]
    assert numbers(dropped) == [4, 5, 6, 7, 8, 9]
    stats = sub.stats()
    assert (stats.queued, stats.dropped, stats.high_water, stats.lagged) == (4, 6, 4, 8)


@pytest.mark.anyio
async def test_counters_after_delivery() -> None:
    bus = MessageBus()
    got: list[Ping] = []

    def handler(event: Ping) -> None:
        if event.n == 3:
            raise ValueError("boom")
        got.append(event)

    sub = Subscription("s", "test.ping", handler, queue_size=8)
    bus.add(sub)
    for n in range(6):
        bus.publish_nowait(Ping(n))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(sub.run)
        await wait_until(lambda: sub.queued == 0 and sub.delivered + sub.errors == 6)
        bus.remove(sub)
    stats = sub.stats()
    assert numbers(got) == [0, 1, 2, 4, 5]
    assert (stats.delivered, stats.errors, stats.dropped, stats.high_water, stats.lagged) == (5, 1, 0, 6, 2)
    assert bus.stats() == []


def test_publish_nowait_never_waits_on_a_block_subscriber() -> None:
    bus = MessageBus()
    dropped: list[Ping] = []
    sub = Subscription("s", "test.#", lambda e: None, queue_size=2, overflow="block", on_drop=dropped.append)
    bus.add(sub)
    for n in range(5):
        bus.publish_nowait(Ping(n))  # synchronous: it cannot wait
    assert numbers(list(sub._queue)) == [0, 1]
    assert numbers(dropped) == [2, 3, 4]
    assert sub.dropped == 3


@pytest.mark.anyio
async def test_block_publish_waits_for_room() -> None:
    bus = MessageBus()
    gate = anyio.Event()
    got: list[Ping] = []

    async def slow(event: Ping) -> None:
        await gate.wait()
        got.append(event)

    sub = Subscription("s", "test.#", slow, queue_size=2, overflow="block", block_timeout=30)
    published = anyio.Event()

    async def publisher() -> None:
        for n in range(4):
            await bus.publish(Ping(n))
        published.set()

    async with delivering(bus, sub), anyio.create_task_group() as tasks:
        tasks.start_soon(publisher)
        # 0 is in the handler, 1 and 2 fill the queue, the publisher waits with 3
        await wait_until(lambda: sub.queued == 2 and sub.full)
        for _ in range(50):
            await anyio.sleep(0)
        assert not published.is_set()
        assert sub.dropped == 0
        gate.set()
        await published.wait()
    assert numbers(got) == [0, 1, 2, 3]
    assert (sub.dropped, sub.delivered) == (0, 4)


@pytest.mark.anyio
async def test_block_publish_drops_after_block_timeout() -> None:
    bus = MessageBus()
    dropped: list[Ping] = []
    sub = Subscription(
        "s", "test.#", lambda e: None, queue_size=1, overflow="block", block_timeout=0.05, on_drop=dropped.append
    )
    bus.add(sub)  # no delivery loop: nothing ever makes room
    await bus.publish(Ping(0))
    started = anyio.current_time()
    await bus.publish(Ping(1))
    assert anyio.current_time() - started >= 0.04
    assert numbers(list(sub._queue)) == [0]
    assert numbers(dropped) == [1]
    assert sub.dropped == 1


def test_a_failing_on_drop_is_contained() -> None:
    def on_drop(event: Any) -> None:
        raise RuntimeError("spill failed")

    sub = Subscription("s", "x", lambda e: None, queue_size=1, overflow="drop_newest", on_drop=on_drop)
    assert sub.offer(1) is True
    assert sub.offer(2) is False
    assert sub.dropped == 1


# -- isolation ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_slow_subscriber_delays_neither_publisher_nor_neighbour() -> None:
    bus = MessageBus()
    gate = anyio.Event()
    slow_got: list[Ping] = []
    fast_got: list[Ping] = []

    async def slow(event: Ping) -> None:
        slow_got.append(event)
        await gate.wait()

    slow_sub = Subscription("slow", "test.#", slow, queue_size=100)
    fast_sub = Subscription("fast", "test.#", fast_got.append, queue_size=100)
    async with delivering(bus, slow_sub, fast_sub):
        for n in range(25):
            bus.publish_nowait(Ping(n))
        for n in range(25, 50):
            await bus.publish(Ping(n))  # returns while the slow subscriber is stuck
        await wait_until(lambda: len(fast_got) == 50)
        assert numbers(slow_got) == [0]
        assert slow_sub.queued == 49
        gate.set()
    assert numbers(fast_got) == list(range(50))
    assert numbers(slow_got) == list(range(50))
    assert slow_sub.dropped == fast_sub.dropped == 0


@pytest.mark.anyio
async def test_a_raising_subscriber_keeps_receiving_and_others_are_unaffected() -> None:
    bus = MessageBus()
    bad_seen: list[int] = []
    good: list[Ping] = []

    async def bad(event: Ping) -> None:
        bad_seen.append(event.n)
        if event.n % 2 == 0:
            raise RuntimeError(f"cannot handle {event.n}")

    bad_sub = Subscription("bad", "test.ping", bad)
    good_sub = Subscription("good", "test.ping", good.append)
    async with delivering(bus, bad_sub, good_sub):
        for n in range(6):
            await bus.publish(Ping(n))
    assert bad_seen == list(range(6))
    assert (bad_sub.errors, bad_sub.delivered) == (3, 3)
    assert numbers(good) == list(range(6))
    assert (good_sub.errors, good_sub.delivered) == (0, 6)


@pytest.mark.anyio
async def test_removed_subscription_drains_and_stops_receiving() -> None:
    bus = MessageBus()
    got: list[Ping] = []
    sub = Subscription("s", "test.#", got.append)
    bus.add(sub)
    bus.publish_nowait(Ping(0))
    bus.publish_nowait(Ping(1))
    bus.remove(sub)
    bus.publish_nowait(Ping(2))
    with anyio.fail_after(5):
        await sub.run()  # returns once the queue is drained
    assert numbers(got) == [0, 1]
    assert sub.closed and sub.offer(Ping(3)) is False


OVERFLOWS = ["drop_oldest", "drop_newest", "block"]
TOPICS = ["a.x", "a.y", "b.x", "b.y.z"]
PATTERNS = ["#", "a.*", "*.x", "b.#", "a.x", "c"]


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("publish"), st.sampled_from(TOPICS), st.booleans()),
            st.tuples(st.just("yield"), st.just(""), st.just(False)),
        ),
        max_size=80,
    ),
    subscribers=st.lists(
        st.tuples(st.sampled_from(PATTERNS), st.sampled_from([1, 2, 3, 1024]), st.sampled_from(OVERFLOWS),
                  st.booleans()),
        min_size=1,
        max_size=4,
    ),
)
def test_each_subscriber_sees_events_in_publish_order(
    ops: list[tuple[str, str, bool]], subscribers: list[tuple[str, int, str, bool]]
) -> None:
    """Whatever the interleaving and policy: a subscriber receives an in-order subsequence of the
    events matching its pattern, and every matching event is either delivered or dropped."""

    async def main() -> None:
        bus = MessageBus()
        received: list[list[int]] = [[] for _ in subscribers]
        dropped: list[list[int]] = [[] for _ in subscribers]
        subs = []
        for i, (pattern, size, overflow, is_async) in enumerate(subscribers):
            if is_async:
                async def handler(event: Ping, into: list[int] = received[i]) -> None:
                    into.append(event.n)
                    await anyio.sleep(0)
            else:
                def handler(event: Ping, into: list[int] = received[i]) -> None:  # type: ignore[misc]
                    into.append(event.n)
            subs.append(
                Subscription(
                    f"s{i}", pattern, handler, queue_size=size, overflow=overflow,  # type: ignore[arg-type]
                    block_timeout=10, on_drop=lambda e, into=dropped[i]: into.append(e.n),
                )
            )
        published: list[tuple[int, str]] = []
        async with delivering(bus, *subs):
            for n, (kind, topic, nowait) in enumerate(ops):
                if kind == "yield":
                    await anyio.sleep(0)
                    continue
                published.append((n, topic))
                if nowait:
                    bus.publish_nowait(Ping(n), topic=topic)
                else:
                    await bus.publish(Ping(n), topic=topic)
        for i, (pattern, *_rest) in enumerate(subscribers):
            expected = [n for n, topic in published if topic_matches(pattern, topic)]
            got = received[i]
            assert sorted(got + dropped[i]) == expected
            assert set(got).isdisjoint(dropped[i])
            assert got == sorted(got)  # an in-order subsequence
            assert subs[i].delivered == len(got) and subs[i].dropped == len(dropped[i])

    anyio.run(main, backend="asyncio")


# -- request/reply --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_request_returns_the_reply() -> None:
    bus = MessageBus()

    async def double(event: Ping) -> int:
        await anyio.sleep(0)
        return event.n * 2

    bus.add_responder("math.double", double)
    bus.add_responder("math.negate", lambda e: -e.n)
    assert await bus.request("math.double", Ping(21)) == 42
    assert await bus.request("math.negate", Ping(5), timeout=1) == -5


@pytest.mark.anyio
async def test_request_times_out() -> None:
    bus = MessageBus()

    async def never(event: Ping) -> int:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    bus.add_responder("slow", never)
    with pytest.raises(BusTimeout, match="within 0.05s"):
        await bus.request("slow", Ping(1), timeout=0.05)
    slow_default = MessageBus(request_timeout=0.05)
    slow_default.add_responder("slow", never)
    with pytest.raises(BusTimeout):
        await slow_default.request("slow", Ping(1))


@pytest.mark.anyio
async def test_request_without_responder_is_a_timeout() -> None:
    bus = MessageBus()
    with pytest.raises(BusTimeout, match="no responder"):
        await bus.request("nobody.home", Ping(1))
    bus.add_responder("mine", lambda e: 1, owner="plugin-a")
    with pytest.raises(SiraError, match="already has a responder"):
        bus.add_responder("mine", lambda e: 2)
    bus.remove_responders("plugin-a")
    with pytest.raises(BusTimeout):
        await bus.request("mine", Ping(1))


# -- through the kernel ---------------------------------------------------------------------------


def delivery_tasks(name: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


@pytest.mark.anyio
async def test_plugin_subscriptions_live_and_die_with_the_plugin() -> None:
    seen: list[Ping] = []

    class Listener:
        @hookimpl
        def sira_register_subscriptions(self, register: SubscriptionRegistrar) -> None:
            register("test.#", seen.append, queue_size=16, name="listener:pings")

    kernel = make_kernel({"listener": Listener})
    async with kernel:
        [sub] = [s for s in kernel.bus.subscriptions if s.owner == "listener"]
        assert (sub.name, sub.pattern, sub.queue_size) == ("listener:pings", "test.#", 16)
        assert len(delivery_tasks("listener:bus:test.#")) == 1
        kernel.bus.publish_nowait(Ping(1))
        await kernel.bus.publish(Ping(2))
        await wait_until(lambda: len(seen) == 2)
        assert numbers(seen) == [1, 2]

        await kernel.unload("listener")
        assert sub not in kernel.bus.subscriptions
        assert sub.closed
        await wait_until(lambda: not delivery_tasks("listener:bus:test.#"))
        kernel.bus.publish_nowait(Ping(3))
        for _ in range(20):
            await anyio.sleep(0)
        assert numbers(seen) == [1, 2]
        assert sub.queued == 0


@pytest.mark.anyio
async def test_kernel_publishes_usage_and_plugin_lifecycle() -> None:
    kernel = make_kernel({"fake": FakeProviderPlugin})
    usage: list[UsageRecord] = []
    active: list[PluginEvent] = []
    stopped: list[PluginEvent] = []
    subs = (
        Subscription("usage", "usage.request", usage.append),
        Subscription("active", "plugin.active", active.append),
        Subscription("stopped", "plugin.stopped", stopped.append),
    )
    async with delivering(kernel.bus, *subs):
        async with kernel:
            await wait_until(lambda: len(active) == 1)
            assert (active[0].plugin_id, active[0].state) == ("fake", "active")
            request = ChatRequest(model="fake-1", messages=[Message("user", "hello there")])
            info = RequestInfo(method="POST", path="/v1/chat/completions", headers={}, request_id="req-1")
            response = await kernel.pipeline.chat(request, info)
            await wait_until(lambda: len(usage) == 1)
            [record] = usage
            assert isinstance(record, UsageRecord)
            assert (record.request_id, record.operation, record.model, record.provider) == (
                "req-1", "chat", "fake-1", "fake",
            )
            assert record.status == 200
            assert response.usage is not None
            assert record.total_tokens == response.usage.total_tokens > 0
            assert stopped == []
            await kernel.unload("fake")
            await wait_until(lambda: len(stopped) == 1)
            assert (stopped[0].plugin_id, stopped[0].state, stopped[0].generation) == (
                "fake", "stopped", active[0].generation,
            )
    assert len(usage) == 1


@pytest.mark.anyio
async def test_unload_delivers_events_queued_before_the_plugin_left() -> None:
    """Events queued for a plugin's subscription when it unloads still reach its handler."""
    from sira_kernel import PluginEvent, hookimpl
    from sira_kernel.testing import make_kernel

    received: list[str] = []

    class Listener:
        sira_api = 1

        @hookimpl
        def sira_register_subscriptions(self, register: object) -> None:
            async def handler(event: PluginEvent) -> None:
                await anyio.sleep(0.01)  # a slow consumer: the queue is not empty when unload starts
                received.append(event.plugin_id)

            register("audit.test", handler)  # type: ignore[operator]

    async with make_kernel({"listener": Listener}) as kernel:
        for i in range(5):
            kernel.bus.publish_nowait(PluginEvent(plugin_id=f"e{i}", state="x", generation=0), topic="audit.test")
        await kernel.unload("listener")
    assert received == [f"e{i}" for i in range(5)]


@pytest.mark.anyio
async def test_plugin_responders_answer_and_leave_with_the_plugin() -> None:
    from sira_kernel import BusTimeout, hookimpl
    from sira_kernel.testing import make_kernel

    class Answering:
        sira_api = 1

        @hookimpl
        def sira_register_subscriptions(self, register: Any) -> None:
            async def double(event: int) -> int:
                return event * 2

            register.responder("math.double", double)

    async with make_kernel({"answering": Answering}) as kernel:
        assert await kernel.bus.request("math.double", 21) == 42
        await kernel.replace("answering")  # the new generation takes the topic over
        assert await kernel.bus.request("math.double", 5) == 10
        await kernel.unload("answering")
        with pytest.raises(BusTimeout):
            await kernel.bus.request("math.double", 1)
