"""An incremental server-sent-events decoder that works on bytes as they arrive.

Anthropic names every event (``event: content_block_delta``) and sends its JSON on one ``data:``
line, but a chunk of the body may end anywhere: inside a line, inside a UTF-8 character, between
``\\r`` and ``\\n``. Line terminators are ASCII, so a complete line never ends inside a multibyte
character and nothing is decoded as text before the JSON decoder sees it. The WHATWG rules apply:
lines end with ``\\n``, ``\\r\\n`` or ``\\r``; ``:`` comments are skipped; the ``data:`` lines of one
event are joined with ``\\n``; a blank line dispatches the event; an event without data is not
dispatched; an unterminated event at the end of the body is discarded.

(The same decoder as ``sira_provider_openai.SSEDecoder``: plugins are separate distributions and
the kernel offers no SSE helper yet.)
"""

from __future__ import annotations

__all__ = ["SSEDecoder"]

_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Feed bytes with :meth:`feed`; it returns the ``(event, data)`` pairs they complete.

    ``event`` is the ``event:`` field ("" when absent), ``data`` the joined data bytes.
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
        if self._skip_lf and chunk:
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
                continue
            if line[0] == 0x3A:  # ":" starts a comment
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                if self._data is None:
                    self._data = [value]
                else:
                    self._data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            # "id", "retry" and unknown fields carry nothing a chat stream needs.
        return events
