"""An incremental server-sent-events decoder for provider adapters, fed bytes as they arrive.

Upstreams stream chat completions as ``text/event-stream``; an adapter feeds each body chunk to one
:class:`SSEDecoder` per stream and gets back the events the chunk completed::

    decoder = SSEDecoder()
    async for chunk in response.aiter_raw():
        for event, data in decoder.feed(chunk):
            ...  # event: the ``event:`` field ("" without one); data: the joined ``data:`` bytes

Chunks may split the stream anywhere: inside a line, inside a UTF-8 character, between ``\\r`` and
``\\n``. Line terminators are ASCII, so a complete line never ends inside a multibyte character and
nothing is decoded as text before the adapter's JSON decoder sees ``data``. The WHATWG event-stream
rules apply: lines end with ``\\n``, ``\\r\\n`` or ``\\r``; a leading byte-order mark is ignored;
``:`` lines are comments (keep-alive pings); the ``data:`` lines of one event are joined with
``\\n``; one space after the colon is dropped; a blank line dispatches the event; an event without
data is not dispatched; ``id``, ``retry`` and unknown fields are ignored; an unterminated event at
the end of the body is discarded.
"""

from __future__ import annotations

__all__ = ["SSEDecoder"]

_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Feed bytes with :meth:`feed`; it returns the ``(event, data)`` pairs they complete.

    ``event`` is the event's ``event:`` field ("" when absent), ``data`` its joined data bytes.
    One decoder serves one stream.
    """

    __slots__ = ("_buffer", "_data", "_event", "_first", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] | None = None
        self._event = ""
        self._skip_lf = False
        self._first = True

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Consume ``chunk``; return the events it completes, in order."""
        if not chunk:
            return []
        if self._skip_lf:
            # The previous chunk ended with "\r": a "\n" here belongs to the same line ending.
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            self._skip_lf = buffer[-1] == 0x0D
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        if not lines:
            return []
        if self._first:
            self._first = False
            lines[0] = lines[0].removeprefix(_BOM)
        events: list[tuple[str, bytes]] = []
        for line in lines:
            if not line:
                if self._data is not None:
                    events.append((self._event, b"\n".join(self._data)))
                self._data = None
                self._event = ""
            elif line.startswith(b"data:"):  # the common case first
                value = line[6:] if line[5:6] == b" " else line[5:]
                if self._data is None:
                    self._data = [value]
                else:
                    self._data.append(value)
            elif line[0] == 0x3A:  # ":" starts a comment
                continue
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"event":
                    self._event = value.decode("utf-8", "replace")
                elif name == b"data":  # "data" without a colon: an empty data line
                    if self._data is None:
                        self._data = [value]
                    else:
                        self._data.append(value)
                # "id", "retry" and unknown fields carry nothing a chat stream needs.
        return events
