"""A fast canned OpenAI upstream that can stream, with configurable chunk pacing.

``POST /v1/chat/completions`` (any prefix before ``/v1`` is accepted too) answers:

* ``"stream": true`` requests with an SSE stream of ``--chunks`` content deltas
  (:func:`canned.sse_events`); with ``--pace-ms`` the first event goes out at once and each next
  one ``--pace-ms`` later, without it the whole stream is written in one go (throughput runs);
* other requests with the canned ``chat.completion`` JSON (the fallback when nginx is missing).

It is a bare asyncio protocol over httptools on uvloop rather than a web framework: the upstream
shares a core with the load generator and must stay well out of the way of the gateway under
test. Usage::

    python bench/upstream_stream.py --port 8101 [--chunks 20] [--pace-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import httptools
import uvloop

from canned import CHAT_COMPLETION, sse_events

_JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(CHAT_COMPLETION)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n\r\n"
_CLOSE = b"connection: close\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answers:
    """The prebuilt response pieces, so that serving a request is a dict lookup and a write."""

    def __init__(self, chunks: int, pace_s: float) -> None:
        self.pace_s = pace_s
        self.events = {usage: [_http_chunk(e) for e in sse_events(chunks, usage)] for usage in (False, True)}
        self.whole_stream = {usage: b"".join(events) + _LAST_CHUNK for usage, events in self.events.items()}


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer in order."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        # Paced answers run as tasks; the next answer on the connection waits for the previous one.
        self.previous: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_BAD_REQUEST)
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None:
            return
        tail = _KEEP_ALIVE if self.parser.should_keep_alive() else _CLOSE
        path = self.url.split(b"?", 1)[0]
        if not path.endswith(b"/v1/chat/completions") or self.parser.get_method() != b"POST":
            self._write(_NOT_FOUND + tail + b"not found", tail is _CLOSE)
            return
        try:
            request = json.loads(b"".join(self.body))
        except ValueError:
            request = {}
        if not isinstance(request, dict) or not request.get("stream"):
            self._write(_JSON_HEAD + tail + CHAT_COMPLETION, tail is _CLOSE)
            return
        options = request.get("stream_options")
        usage = bool(isinstance(options, dict) and options.get("include_usage"))
        if self.answers.pace_s <= 0 and self.previous is None:
            self._write(_SSE_HEAD + tail + self.answers.whole_stream[usage], tail is _CLOSE)
            return
        self.previous = asyncio.ensure_future(self._paced(self.previous, usage, tail is _CLOSE))

    def _write(self, data: bytes, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close:
            self.transport.close()

    async def _paced(self, previous: asyncio.Task[None] | None, usage: bool, close: bool) -> None:
        if previous is not None:
            await previous
        events = self.answers.events[usage]
        self._write(_SSE_HEAD + (_CLOSE if close else _KEEP_ALIVE) + events[0], False)
        for event in events[1:]:
            await asyncio.sleep(self.answers.pace_s)
            if self.transport is None:
                return
            self._write(event, False)
        self._write(_LAST_CHUNK, close)
        if self.previous is asyncio.current_task():
            self.previous = None


async def serve(host: str, port: int, answers: Answers) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(answers), host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20, help="content deltas per streamed answer")
    parser.add_argument("--pace-ms", type=float, default=0.0, help="delay between SSE events (0: none)")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, Answers(args.chunks, args.pace_ms / 1000)))


if __name__ == "__main__":
    main()
