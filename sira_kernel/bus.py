"""The message bus: typed events, topic routing, bounded per-subscriber queues, request/reply.

Events are msgspec Structs; an event class names its topic in a ``topic`` ClassVar (or the publisher
passes ``topic=``). Topics are dotted; a subscription pattern's ``*`` matches one segment and ``#``
any number of segments, including none (``usage.#``, ``plugin.*``).

Each subscription owns a bounded queue and one delivery task, so a slow or raising subscriber never
delays the publisher or its neighbours, and each subscriber sees events in publish order. When a
queue is full its declared overflow policy decides:

* ``drop_oldest`` — discard the oldest queued event to make room (default; for metrics-like feeds);
* ``drop_newest`` — discard the event being published;
* ``block`` — :meth:`MessageBus.publish` waits up to the subscription's ``block_timeout`` for room,
  then drops. :meth:`MessageBus.publish_nowait` never waits: it drops at once.

Every drop is counted and passed to the subscription's ``on_drop`` callback (so a ledger can spill
to disk instead of losing a record). ``lagged`` counts events that found the queue at least half
full, whether or not they were then queued.

A :class:`BusBridge` carries events between instances (Redis later); this module only defines it.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.lowlevel
import msgspec

from .errors import BusTimeout, SiraError
from .logs import get_logger
from .registrations import OverflowPolicy

__all__ = ["BusBridge", "MessageBus", "Subscription", "SubscriptionStats", "topic_matches"]

_log = get_logger("sira.bus")
_CHECKPOINT_EVERY = 128
_MAX_CACHED_TOPICS = 4096


def topic_matches(pattern: str, topic: str) -> bool:
    """True when ``topic`` matches ``pattern`` (``*`` = one segment, ``#`` = any number)."""
    return _match(pattern.split("."), topic.split("."))


def _match(pattern: list[str], topic: list[str]) -> bool:
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, topic[i:]) for i in range(len(topic) + 1))
    if not topic:
        return False
    if head == "*" or head == topic[0]:
        return _match(rest, topic[1:])
    return False


class SubscriptionStats(msgspec.Struct):
    name: str
    pattern: str
    owner: str
    overflow: str
    queue_size: int
    queued: int
    high_water: int
    delivered: int
    dropped: int
    lagged: int
    errors: int


class Subscription:
    """One subscriber: its pattern, bounded queue, overflow policy, counters and delivery loop."""

    def __init__(
        self,
        name: str,
        pattern: str,
        handler: Callable[[Any], Any],
        *,
        owner: str = "kernel",
        queue_size: int = 1024,
        overflow: OverflowPolicy = "drop_oldest",
        block_timeout: float = 1.0,
        on_drop: Callable[[Any], None] | None = None,
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.owner = owner
        self.handler = handler
        self.queue_size = queue_size
        self.overflow = overflow
        self.block_timeout = block_timeout
        self.on_drop = on_drop
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self._queue: deque[Any] = deque()
        self._half = max(1, queue_size // 2)
        self._wakeup: anyio.Event | None = None
        self._space: anyio.Event | None = None
        self.closed = False
        self.finished = anyio.Event()
        self.delivered = 0
        self.dropped = 0
        self.lagged = 0
        self.errors = 0
        self.high_water = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        return len(self._queue) >= self.queue_size

    def stats(self) -> SubscriptionStats:
        return SubscriptionStats(
            name=self.name, pattern=self.pattern, owner=self.owner, overflow=self.overflow,
            queue_size=self.queue_size, queued=len(self._queue), high_water=self.high_water,
            delivered=self.delivered, dropped=self.dropped, lagged=self.lagged, errors=self.errors,
        )

    def _drop(self, event: Any) -> None:
        self.dropped += 1
        if self.on_drop is not None:
            try:
                self.on_drop(event)
            except Exception:
                _log.exception("bus.on_drop_failed", subscription=self.name)

    def offer(self, event: Any) -> bool:
        """Queue ``event`` without waiting; apply the overflow policy when full. True if queued."""
        if self.closed:
            return False
        queue = self._queue
        depth = len(queue)
        if depth >= self._half:
            self.lagged += 1
        if depth >= self.queue_size:
            if self.overflow == "drop_oldest":
                self._drop(queue.popleft())
                depth -= 1
            else:  # drop_newest, or block when the publisher cannot wait
                self._drop(event)
                return False
        queue.append(event)
        depth += 1
        if depth > self.high_water:
            self.high_water = depth
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()
        return True

    async def offer_wait(self, event: Any) -> bool:
        """Queue ``event``, waiting up to ``block_timeout`` for room when full (block policy)."""
        if self.full and not self.closed:
            with anyio.move_on_after(self.block_timeout):
                while self.full and not self.closed:
                    if self._space is None:
                        self._space = anyio.Event()
                    await self._space.wait()
        return self.offer(event)

    def close(self) -> None:
        """Stop accepting events and wake the delivery loop so it can finish."""
        self.closed = True
        for ev in (self._wakeup, self._space):
            if ev is not None:
                ev.set()
        self._wakeup = self._space = None

    async def run(self) -> None:
        """Deliver queued events to the handler, in order, until closed and drained (or cancelled)."""
        try:
            await self._deliver()
        finally:
            self.finished.set()

    async def wait_drained(self, timeout: float) -> bool:
        """After :meth:`close`, wait up to ``timeout`` for the queued events to be delivered."""
        with anyio.move_on_after(timeout):
            await self.finished.wait()
        return self.finished.is_set()

    async def _deliver(self) -> None:
        queue = self._queue
        handler = self.handler
        is_async = self._is_async
        since_checkpoint = 0
        while True:
            if not queue:
                if self.closed:
                    return
                wakeup = self._wakeup = anyio.Event()
                await wakeup.wait()
                since_checkpoint = 0
                continue
            event = queue.popleft()
            space = self._space
            if space is not None:
                self._space = None
                space.set()
            try:
                if is_async:
                    await handler(event)
                else:
                    handler(event)
                self.delivered += 1
            except Exception:
                self.errors += 1
                _log.exception("bus.subscriber_failed", subscription=self.name, owner=self.owner)
            since_checkpoint += 1
            if since_checkpoint >= _CHECKPOINT_EVERY:
                since_checkpoint = 0
                await anyio.lowlevel.checkpoint()


@runtime_checkable
class BusBridge(Protocol):
    """Carries events between Sira instances (for example over Redis pub/sub).

    The bus hands a bridge every event published on a topic the bridge exports, encoded with
    msgspec; events the bridge receives are published locally with ``from_bridge=True`` so they are
    never sent back. No implementation ships with the kernel.
    """

    def exports(self, topic: str) -> bool:
        """Whether events on ``topic`` should leave this instance."""
        ...

    async def send(self, topic: str, payload: bytes) -> None:
        """Send one encoded event to the other instances."""
        ...

    def receive(self) -> AsyncIterator[tuple[str, bytes]]:
        """Yield ``(topic, payload)`` for events published by other instances."""
        ...


Responder = Callable[[Any], Awaitable[Any] | Any]


class MessageBus:
    """In-process publish/subscribe and request/reply."""

    def __init__(self, default_queue_size: int = 1024, request_timeout: float = 5.0) -> None:
        self.default_queue_size = default_queue_size
        self.request_timeout = request_timeout
        self._subscriptions: tuple[Subscription, ...] = ()
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._responders: dict[str, tuple[str, Responder]] = {}
        self.published = 0

    # -- subscriptions ------------------------------------------------------------------------------

    def add(self, subscription: Subscription) -> None:
        """Add a subscription. Its delivery loop (``subscription.run``) is run by the caller."""
        self._subscriptions = (*self._subscriptions, subscription)
        self._routes = {}

    def remove(self, subscription: Subscription) -> None:
        """Remove a subscription and close it (its loop drains what is queued, then returns)."""
        self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
        self._routes = {}
        subscription.close()

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._subscriptions

    def stats(self) -> list[SubscriptionStats]:
        return [s.stats() for s in self._subscriptions]

    def _subscribers(self, topic: str) -> tuple[Subscription, ...]:
        found = self._routes.get(topic)
        if found is None:
            found = tuple(s for s in self._subscriptions if topic_matches(s.pattern, topic))
            if len(self._routes) >= _MAX_CACHED_TOPICS:
                self._routes = {}  # topics with ids in them must not grow the cache without bound
            self._routes[topic] = found
        return found

    # -- publishing ---------------------------------------------------------------------------------

    @staticmethod
    def _topic_of(event: Any, topic: str | None) -> str:
        if topic is not None:
            return topic
        found = getattr(type(event), "topic", None)
        if not isinstance(found, str):
            raise TypeError(f"{type(event).__name__} has no topic ClassVar; pass topic=")
        return found

    def publish_nowait(self, event: Any, topic: str | None = None) -> None:
        """Publish without ever waiting (the request path uses this). Full queues apply their policy."""
        self.published += 1
        for sub in self._subscribers(self._topic_of(event, topic)):
            sub.offer(event)

    async def publish(self, event: Any, topic: str | None = None) -> None:
        """Publish; for ``block`` subscribers that are full, wait up to their ``block_timeout``."""
        self.published += 1
        for sub in self._subscribers(self._topic_of(event, topic)):
            if sub.overflow == "block" and sub.full:
                await sub.offer_wait(event)
            else:
                sub.offer(event)

    # -- request/reply ------------------------------------------------------------------------------

    def add_responder(self, topic: str, responder: Responder, owner: str = "kernel") -> None:
        """Answer requests on ``topic`` (exact match). One responder per topic."""
        if topic in self._responders:
            raise SiraError(f"topic {topic!r} already has a responder ({self._responders[topic][0]})")
        self._responders = {**self._responders, topic: (owner, responder)}

    def remove_responders(self, owner: str | None = None, *, topic: str | None = None,
                          owner_prefix: str | None = None) -> None:
        """Remove the responders of ``owner`` (or whose owner starts with ``owner_prefix``),
        optionally only for ``topic``."""

        def matches(t: str, who: str) -> bool:
            if topic is not None and t != topic:
                return False
            if owner is not None:
                return who == owner
            return owner_prefix is not None and who.startswith(owner_prefix)

        self._responders = {t: r for t, r in self._responders.items() if not matches(t, r[0])}

    async def request(self, topic: str, event: Any, timeout: float | None = None) -> Any:
        """Send ``event`` to the responder of ``topic`` and return its reply within ``timeout``."""
        entry = self._responders.get(topic)
        if entry is None:
            raise BusTimeout(f"no responder for topic {topic!r}")
        limit = self.request_timeout if timeout is None else timeout
        try:
            with anyio.fail_after(limit):
                reply = entry[1](event)
                if inspect.isawaitable(reply):
                    reply = await reply
                return reply
        except TimeoutError:
            raise BusTimeout(f"no reply on {topic!r} within {limit}s") from None
