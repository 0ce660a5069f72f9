"""A fake Acme upstream for tests: a real HTTP server on loopback speaking Acme's wire format.

Built on :class:`sira_kernel.testing.loopback.LoopbackUpstream`, so it has the loopback test API
(``base_url``, ``requests``, ``enqueue(Fault(...))``, the stream counters, ``wait_until_async``,
``reset()``); ``handle`` is all Acme. It answers ``POST /acme/v1/generate``:

* the text is ``"Echo: <text of the last user turn>"``, streamed one word per ``delta`` line; after
  tool turns it is ``"Results: <their texts>"``; ``format: "json"`` wraps it as ``{"reply": text}``;
  ``max_words`` cuts it (``ended: "limit"``);
* with ``tools`` and a last turn from the user, calls to the first tool (and the second, unless
  ``single_tool``) with the shared fakes' inputs ``{"location": "Paris"}`` / ``"Tokyo"``, streamed as a
  ``tool`` line with ``ref`` and ``name`` and then 6-character ``input`` fragments;
* ``count``: ``read`` = words of every turn, ``wrote`` = words and input fragments of the answer.

Faults: ``status`` answers ``{"problem": {"kind", "detail"}}`` (``message`` is the detail); a
:class:`AcmeFault` with ``error_after`` sends an ``error`` line after that many stream lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from sira_kernel.testing.loopback import (
    FALLBACK_REPLY,
    TOOL_ARGUMENTS,
    Fault,
    LoopbackUpstream,
    body_fault,
    fragments,
    split_words,
)

STREAM_TYPE = "application/vnd.acme.stream"
KINDS = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "unknown_engine", 408: "timeout",
         429: "rate_limited", 503: "overloaded"}


@dataclass
class AcmeFault(Fault):
    """A loopback ``Fault`` plus ``error_after``: an ``error`` line after that many stream lines."""

    error_after: int | None = None


def _line(item: Any) -> bytes:
    return msgspec.json.encode(item) + b"\n"


def _problem(status: int, detail: str | None, headers: dict[str, str]) -> web.Response:
    kind = KINDS.get(status, "internal" if status >= 500 else "invalid")
    body = {"problem": {"kind": kind, "detail": detail or f"the fake Acme answered {status}"}}
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json",
                        headers=headers)


class FakeAcmeUpstream(LoopbackUpstream):
    """A real Acme server on loopback (see the module doc)."""

    fault_type = AcmeFault

    async def handle(self, request: web.Request, body: Any, fault: Fault) -> web.StreamResponse:
        headers = self.fault_headers(fault)
        stream = isinstance(body, dict) and body.get("stream") is True
        if fault.body is not None:
            return body_fault(fault, headers, stream=stream)
        if fault.status is not None:
            return _problem(fault.status, fault.message, headers)
        if request.method != "POST" or request.path != "/acme/v1/generate":
            return _problem(404, f"no route {request.method} {request.path}", headers)
        if self.api_key is not None and request.headers.get("x-acme-key") != self.api_key:
            return _problem(401, "unknown key", headers)
        problem = _invalid(body)
        if problem:
            return _problem(400, problem, headers)
        self._ids += 1
        answer = _Answer.build(body, f"gen-{self._ids}")
        if not stream:
            return await self.write_json(request, msgspec.json.encode(answer.whole()), fault, headers)
        lines = list(answer.lines())
        error_after = fault.error_after if isinstance(fault, AcmeFault) else None
        if error_after is not None:
            lines = [*lines[:error_after], _line({"error": {"kind": "overloaded", "detail": "busy, try later"}})]
        return await self.write_sse(request, lines, fault, headers, content_type=STREAM_TYPE)


def _invalid(body: Any) -> str | None:
    """What a real Acme would refuse in ``body`` (None: nothing)."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    unknown = set(body) - {"engine", "turns", "tools", "single_tool", "max_words", "format", "stream"}
    if unknown:
        return f"unknown fields: {sorted(unknown)}"
    turns = body.get("turns")
    if not isinstance(body.get("engine"), str) or not isinstance(turns, list) or not turns:
        return "engine and turns are required"
    refs: set[str] = set()
    for turn in turns:
        if turn.get("who") not in ("system", "user", "bot", "tool"):
            return f"unknown speaker {turn.get('who')!r}"
        refs.update(call["ref"] for call in turn.get("calls", ()))
        if turn["who"] == "tool" and turn.get("ref") not in refs:
            return f"a tool turn answers no call: {turn.get('ref')!r}"
    return None


@dataclass
class _Answer:
    id: str
    engine: str
    words: list[str]
    calls: list[tuple[str, str, str]]
    ended: str
    read: int

    @classmethod
    def build(cls, body: dict[str, Any], answer_id: str) -> _Answer:
        turns = body["turns"]
        last = turns[-1]
        tools = body.get("tools") or []
        calls: list[tuple[str, str, str]] = []
        if tools and last["who"] == "user":
            count = 1 if body.get("single_tool") or len(tools) == 1 else 2
            calls = [(f"call-{answer_id}-{k}", tools[k]["name"], TOOL_ARGUMENTS[k]) for k in range(count)]
        if last["who"] == "tool":
            text = "Results: " + "; ".join(t["text"] for t in turns if t["who"] == "tool")
        else:
            user = next((t["text"] for t in reversed(turns) if t["who"] == "user"), "")
            text = f"Echo: {user}" if user.strip() else FALLBACK_REPLY
        if body.get("format") == "json":
            text = msgspec.json.encode({"reply": text}).decode()
        words = [] if calls else split_words(text)
        ended = "calls" if calls else "done"
        limit = body.get("max_words")
        if isinstance(limit, int) and 0 < limit < len(words):
            words, ended = words[:limit], "limit"
        read = sum(len(str(t.get("text", "")).split()) for t in turns)
        return cls(answer_id, body["engine"], words, calls, ended, read)

    def count(self) -> dict[str, int]:
        wrote = len(self.words) + sum(len(fragments(arguments)) for _, _, arguments in self.calls)
        return {"read": self.read, "wrote": wrote}

    def whole(self) -> dict[str, Any]:
        calls = [{"ref": ref, "tool": name, "input": arguments} for ref, name, arguments in self.calls]
        return {"id": self.id, "engine": self.engine, "text": "".join(self.words), "calls": calls,
                "ended": self.ended, "count": self.count()}

    def lines(self) -> Iterator[bytes]:
        yield _line({"start": {"id": self.id, "engine": self.engine}})
        for word in self.words:
            yield _line({"delta": word})
        for n, (ref, name, arguments) in enumerate(self.calls):
            yield _line({"tool": {"n": n, "ref": ref, "name": name}})
            for fragment in fragments(arguments):
                yield _line({"tool": {"n": n, "input": fragment}})
        yield _line({"end": {"ended": self.ended, "count": self.count()}})
