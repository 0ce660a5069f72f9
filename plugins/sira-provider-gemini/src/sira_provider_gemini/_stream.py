"""Turning a ``streamGenerateContent?alt=sse`` byte stream into the kernel's typed stream events."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from sira_kernel.errors import ProviderError, ProviderUnavailable
from sira_kernel.sse import SSEDecoder
from sira_kernel.types import StreamEvent, StreamStart

from ._errors import blocked_prompt, status_error
from ._response import GenerateContentResponse, Translator, decode_response

__all__ = ["StreamParser"]


class StreamParser:
    """Feed raw bytes with :meth:`feed`, call :meth:`end` at the end of the body; get events.

    Every SSE event is a whole ``GenerateContentResponse``. ``StreamStart`` comes before the first
    one's events; ``Usage`` (from the last ``usageMetadata``) comes from :meth:`end`, since Gemini
    repeats usage on every event and has no end marker but the end of the body.

    ``started`` says ``StreamStart`` was emitted; ``failure`` holds the error when the upstream sent an
    error object, a refused prompt (``promptFeedback.blockReason``), an event that is not valid JSON,
    or (after :meth:`end`) stopped before every candidate finished. Nothing after a failure is parsed.
    ``done`` stays false: Gemini streams have no end marker but the end of the body.
    """

    __slots__ = (
        "_created",
        "_decoder",
        "_fallback_id",
        "_fallback_model",
        "_provider",
        "_secrets",
        "_translator",
        "done",
        "failure",
        "started",
    )

    def __init__(
        self, *, provider: str, secrets: Iterable[str], fallback_id: str, fallback_model: str, created: int
    ) -> None:
        self._decoder = SSEDecoder()
        self._translator = Translator()
        self._provider = provider
        self._secrets = tuple(secrets)
        self._fallback_id = fallback_id
        self._fallback_model = fallback_model
        self._created = created
        self.started = False
        self.done = False
        self.failure: ProviderError | None = None

    def feed(self, raw: bytes) -> list[StreamEvent]:
        """The events completed by ``raw``."""
        events: list[StreamEvent] = []
        if self.failure is not None:
            return events
        for _, data in self._decoder.feed(raw):
            try:
                response = decode_response(data)
            except msgspec.DecodeError as exc:
                self.failure = ProviderUnavailable(
                    f"upstream sent an invalid stream event: {exc}", provider=self._provider
                )
                break
            if not self.accept(response, events):
                break
        return events

    def accept(self, response: GenerateContentResponse, events: list[StreamEvent]) -> bool:
        """Append the events of one decoded response object; False (and ``failure`` set) when it failed."""
        if response.error is not None:
            error = response.error
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) and code >= 400 else 502
            self.failure = status_error(status, {}, error, provider=self._provider, secrets=self._secrets)
            return False
        reason = response.block_reason
        if reason is not None:
            detail = response.prompt_feedback.block_reason_message if response.prompt_feedback else None
            self.failure = blocked_prompt(reason, detail, provider=self._provider)
            return False
        if not self.started:
            self.started = True
            events.append(
                StreamStart(
                    id=response.response_id or self._fallback_id,
                    model=response.model_version or self._fallback_model,
                    created=self._created,
                )
            )
        self._translator.events(response, events)
        return True

    def end(self) -> list[StreamEvent]:
        """The body ended: the final ``Usage``, or ``failure`` set if the answer was cut short."""
        if self.failure is not None:
            return []
        if not self.started:
            self.failure = ProviderUnavailable("upstream sent an empty stream", provider=self._provider)
            return []
        if not self._translator.complete:
            self.failure = ProviderUnavailable(
                "upstream closed the stream before it finished", provider=self._provider
            )
            return []
        usage = self._translator.usage
        return [usage] if usage is not None else []
