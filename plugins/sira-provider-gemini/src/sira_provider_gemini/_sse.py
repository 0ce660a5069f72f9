"""An incremental server-sent-events decoder that works on bytes as they arrive.

This is ``sira_provider_openai._sse.SSEDecoder``, copied so the two distributions stay independent
(a Gemini deployment should not need the OpenAI adapter installed); it belongs in the kernel.

Chunks may split the stream anywhere: inside a line, inside a UTF-8 character, between ``\\r`` and
``\\n``. Lines end with ``\\n``, ``\\r\\n`` (Google's choice) or ``\\r``; line terminators are ASCII, so a
complete line never ends inside a multibyte character and no text decoding is needed until JSON
decoding. Follows the WHATWG event-stream rules: ``:`` comments are skipped, ``data:`` lines of one
event are joined with ``\\n``, a blank line dispatches the event, an event without data is not
dispatched, and an unterminated event at the end of the stream is discarded.
"""

from __future__ import annotations

__all__ = ["SSEDecoder"]

_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Feed bytes with :meth:`feed`; it returns the ``(event, data)`` pairs they complete.

    ``event`` is the ``event:`` field ("" when absent), ``data`` the joined data bytes.
    """

    __slots__ = ("_buffer", "_data", "_event", "_skip_lf", "_first")

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
            if buffer[-1] == 0x0D:
                self._skip_lf = True
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        if not lines:
            return []
        if self._first:
            self._first = False
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][3:]
        events: list[tuple[str, bytes]] = []
        for line in lines:
            if not line:
                if self._data is not None:
                    events.append((self._event, b"\n".join(self._data)))
                self._data = None
                self._event = ""
            elif line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                if self._data is None:
                    self._data = [value]
                else:
                    self._data.append(value)
            elif line[0] == 0x3A:  # ":" starts a comment (keep-alive pings)
                continue
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"event":
                    self._event = value.decode("utf-8", "replace")
                elif name == b"data":  # "data" with no colon: an empty data line
                    if self._data is None:
                        self._data = [value]
                    else:
                        self._data.append(value)
                # "id", "retry" and unknown fields carry nothing a chat stream needs.
        return events
