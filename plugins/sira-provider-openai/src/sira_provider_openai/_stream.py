"""Turning an upstream SSE byte stream into the kernel's typed stream events."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from sira_kernel.errors import ProviderError, ProviderUnavailable
from sira_kernel.sse import SSEDecoder
from sira_kernel.types import StreamEvent, StreamStart
from sira_kernel.upstream import sanitize

from ._errors import upstream_message
from ._wire import Chunk, chunk_events, decode_chunk

__all__ = ["StreamParser"]


class StreamParser:
    """Feed raw bytes; get events. ``StreamStart`` comes before the first chunk's events.

    After :meth:`feed`, ``started`` says ``StreamStart`` was emitted, ``done`` that the upstream sent
    ``data: [DONE]``, ``finished`` that a choice finished (a stream that then ends without ``[DONE]``
    still counts as complete), and ``failure`` holds the error when the upstream reported one
    in-stream (an ``error`` object or ``event: error``) or sent a chunk that is not valid JSON.
    Nothing after ``done`` or a failure is parsed. :meth:`end` judges a body that ended without
    ``[DONE]``.
    """

    __slots__ = (
        "_decoder",
        "_fallback_id",
        "_fallback_model",
        "_provider",
        "_secrets",
        "done",
        "failure",
        "finished",
        "started",
    )

    def __init__(
        self, *, provider: str, secrets: Iterable[str], fallback_id: str, fallback_model: str
    ) -> None:
        self._decoder = SSEDecoder()
        self._provider = provider
        self._secrets = tuple(secrets)
        self._fallback_id = fallback_id
        self._fallback_model = fallback_model
        self.started = False
        self.done = False
        self.finished = False
        self.failure: ProviderError | None = None

    def feed(self, raw: bytes) -> list[StreamEvent]:
        """The events completed by ``raw``."""
        events: list[StreamEvent] = []
        if self.done or self.failure is not None:
            return events
        for name, data in self._decoder.feed(raw):
            if data == b"[DONE]":
                self.done = True
                break
            if name == "error":
                self.failure = self._error(data)
                break
            try:
                chunk = decode_chunk(data)
            except msgspec.DecodeError as exc:
                self.failure = ProviderUnavailable(
                    f"upstream sent an invalid stream chunk: {exc}", provider=self._provider
                )
                break
            if chunk.error is not None:
                self.failure = self._error(data)
                break
            if not self.started:
                self.started = True
                events.append(self._start(chunk))
            if chunk_events(chunk, events):
                self.finished = True
        return events

    def end(self) -> list[StreamEvent]:
        """The body ended: complete if ``[DONE]`` came or a choice finished, else ``failure`` is set."""
        if self.failure is None and not self.done and not self.finished:
            self.failure = ProviderUnavailable(
                "upstream closed the stream before it finished", provider=self._provider
            )
        return []

    def _start(self, chunk: Chunk) -> StreamStart:
        return StreamStart(
            id=chunk.id or self._fallback_id,
            model=chunk.model or self._fallback_model,
            created=int(chunk.created),
        )

    def _error(self, data: bytes) -> ProviderError:
        text, _ = upstream_message(data)
        return ProviderUnavailable(
            f"upstream failed mid-stream: {sanitize(text, self._secrets)}", provider=self._provider
        )
