"""Server-Sent Events on the wire (WHATWG HTML, "Server-sent events" §9.2.6).

``EventDecoder`` turns the bytes of an upstream stream into the ``data`` payloads of
its events, as many as each network read completes, so a stream that arrives in
bursts is handled (and re-sent) one burst at a time rather than one event at a time.
"""

from __future__ import annotations


class EventDecoder:
    """Incremental SSE parsing, bytes in, complete events' ``data`` out.

    Lines end with CRLF, LF or CR (a CRLF split across two reads counts once); an
    empty line dispatches the event; ``data`` lines are joined with LF, one leading
    space dropped from each value; comments (``:``) and other fields are ignored; an
    event without ``data`` is not dispatched.
    """

    def __init__(self) -> None:
        self._partial = b""  # an unterminated line
        self._data: list[bytes] = []
        self._skip_lf = False  # the last read ended with CR: a leading LF is its pair

    def feed(self, raw: bytes) -> list[bytes]:
        """The payloads of the events that ``raw`` completes, in order."""
        if self._skip_lf:
            self._skip_lf = False
            if raw[:1] == b"\n":
                raw = raw[1:]
        buffer = self._partial + raw if self._partial else raw
        if b"\r" in buffer:
            self._skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._partial = buffer.split(b"\n")
        events = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(b"\n".join(data) if len(data) > 1 else data[0])
                    data = self._data = []
            elif line.startswith(b"data"):
                if line[4:5] == b":":
                    value = line[5:]
                    data.append(value[1:] if value[:1] == b" " else value)
                elif len(line) == 4:  # a bare "data" field: an empty value
                    data.append(b"")
        return events
