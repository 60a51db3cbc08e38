"""Stream formats of the Engine API, seen from the client.

- The multiplexed stream of a non-TTY container (attach, logs, exec): frames of
  ``[stream, 0, 0, 0, size (u32, big-endian)]`` then ``size`` bytes, stream 0 stdin,
  1 stdout, 2 stderr. A TTY container's stream is raw bytes.
- JSON progress streams (pull): JSON objects one after another, usually a line each.
- A hijacked connection (attach, exec start): after ``101 UPGRADED`` the socket carries
  the container's output one way and stdin the other; the client half-closes its side
  (``shutdown(SHUT_WR)``) at the end of its stdin and keeps reading.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up; annotations stay strings here
    import socket
    from typing import Any

# socket (its enums: ~2 ms) loads only where a constant of it is needed; these functions
# take any object with recv/sendall, a socket.socket or the bare _socket.socket that
# Client.upload uses.

STDIN, STDOUT, STDERR = 0, 1, 2
DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p, ctrl-q
# ctrl-@ is 0, ctrl-a 1 ... ctrl-z 26, then ctrl-[ ctrl-\\ ctrl-] ctrl-^ ctrl-_ (27..31)
_CTRL = "@abcdefghijklmnopqrstuvwxyz[\\]^_"
RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
_HEADER = 8
_CHUNK = 65536


def parse_detach_keys(text: str | None) -> bytes:
    """Docker's detach key syntax: comma-separated single characters or ``ctrl-X``;
    empty means ctrl-p,ctrl-q. ValueError for anything else."""
    if not text:
        return DEFAULT_DETACH_KEYS
    codes = bytearray()
    for key in text.split(","):
        if len(key) == 1:
            codes += key.encode("latin-1", errors="replace")[:1]
            continue
        lowered = key.lower()
        if lowered.startswith("ctrl-") and len(lowered) == 6 and lowered[5] in _CTRL:
            codes.append(_CTRL.index(lowered[5]))
            continue
        raise ValueError(f"Invalid detach keys ({text}) provided: unknown key {key!r}")
    return bytes(codes)


class DetachMatcher:
    """Finds the detach sequence in a byte stream cut anywhere; bytes that begin the
    sequence are held back until it is clear they do not complete it."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.pos = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to pass on, whether the sequence completed)."""
        out = bytearray()
        keys = self.keys
        for byte in data:
            if byte == keys[self.pos]:
                self.pos += 1
                if self.pos == len(keys):
                    self.pos = 0
                    return bytes(out), True
                continue
            if self.pos:
                out += keys[: self.pos]
                self.pos = 0
                if byte == keys[0]:
                    self.pos = 1
                    continue
            out.append(byte)
        return bytes(out), False


class FrameDecoder:
    """Incremental decoder of the multiplexed stream: ``feed`` bytes, get whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= _HEADER:
            size = int.from_bytes(buffer[start + 4 : start + 8], "big")
            end = start + _HEADER + size
            if len(buffer) < end:
                break
            frames.append((buffer[start], bytes(buffer[start + _HEADER : end])))
            start = end
        if start:
            del buffer[:start]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back (a stream that ends here was cut short)."""
        return len(self._buffer)


def demux(data: bytes) -> list[tuple[int, bytes]]:
    """A whole multiplexed stream as ``[(stream, data), ...]``."""
    return FrameDecoder().feed(data)


def iter_frames(read: Callable[[], bytes], *, raw: bool) -> Iterator[tuple[int, bytes]]:
    """Frames from ``read()`` (a chunk of bytes, ``b""`` at the end); a raw stream's
    chunks come as stdout."""
    if raw:
        while chunk := read():
            yield STDOUT, chunk
        return
    decoder = FrameDecoder()
    while chunk := read():
        yield from decoder.feed(chunk)


def iter_json(read: Callable[[], bytes]) -> Iterator[dict[str, Any]]:
    """JSON objects from a stream of chunks, whether or not one line holds each."""
    decoder = json.JSONDecoder()
    pending = b""
    text = ""
    while True:
        chunk = read()
        if chunk:
            pending += chunk
            try:
                text += pending.decode()
                pending = b""
            except UnicodeDecodeError:  # a character split between chunks
                continue
        position = 0
        length = len(text)
        while True:
            while position < length and text[position] in " \t\r\n":
                position += 1
            if position >= length:
                break
            try:
                value, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError:
                if not chunk:  # the stream ended inside an object
                    raise
                break
            if isinstance(value, dict):
                yield value
        text = text[position:]
        if not chunk:
            return


# ---- raw HTTP on a socket (the hijack) ----------------------------------------------------


def read_head(sock: socket.socket) -> tuple[int, str, dict[str, str], bytes]:
    """Read an HTTP response head: (status, reason, lower-case headers, bytes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(_CHUNK)
        if not chunk:
            raise ConnectionError("the daemon closed the connection before answering")
        data += chunk
        if len(data) > 1 << 20:
            raise ConnectionError("the daemon's answer has no end of headers")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers, rest


def read_body(sock: socket.socket, headers: dict[str, str], rest: bytes) -> bytes:
    """The body of a (non-upgraded) answer read by :func:`read_head`."""
    if "content-length" in headers:
        size = int(headers["content-length"])
        while len(rest) < size:
            chunk = sock.recv(_CHUNK)
            if not chunk:
                break
            rest += chunk
        return rest[:size]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            while b"\r\n" not in rest:
                chunk = sock.recv(_CHUNK)
                if not chunk:
                    return body
                rest += chunk
            line, _, rest = rest.partition(b"\r\n")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return body
            while len(rest) < size + 2:
                chunk = sock.recv(_CHUNK)
                if not chunk:
                    return body + rest[:size]
                rest += chunk
            body += rest[:size]
            rest = rest[size + 2 :]
    while chunk := sock.recv(_CHUNK):
        rest += chunk
    return rest


class RawResponse:
    """An answer read straight off its socket, without http.client (whose import, with
    ``email``, costs a CLI run ~10 ms): status, lower-case headers, and the body as it
    arrives, de-chunked. The same surface as the client's ``StreamResponse``."""

    def __init__(self, sock: socket.socket, status: int, headers: dict[str, str], rest: bytes):
        self.sock = sock
        self.status = status
        self.headers = headers
        self._buffer = rest
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        # body bytes still to come: None until the daemon closes (or the last chunk)
        self._left: int | None = None if self._chunked or length is None else int(length)
        self._chunk_left = 0  # data bytes left in the current chunk
        self._done = status in (204, 304) or self._left == 0

    def _fill(self) -> bool:
        """More bytes into the buffer; False at the end of the connection."""
        try:
            data = self.sock.recv(_CHUNK)
        except ConnectionResetError:
            data = b""
        self._buffer += data
        return bool(data)

    def read_chunk(self) -> bytes:
        """What has arrived (at most 64 KiB); ``b""`` at the end (or where the answer
        breaks off, as a cut-short stream is read by ``StreamResponse``)."""
        while not self._done:
            if not self._chunked:
                if not self._buffer and not self._fill():
                    self._done = True
                    break
                data = self._buffer[:_CHUNK]
                if self._left is not None:
                    data = data[: self._left]
                    self._left -= len(data)
                    self._done = self._left == 0
                self._buffer = self._buffer[len(data) :]
                return data
            if self._chunk_left == 0:
                while b"\r\n" not in self._buffer:
                    if not self._fill():
                        self._done = True
                        return b""
                line, _, self._buffer = self._buffer.partition(b"\r\n")
                if not line.strip():
                    continue  # the line end after a chunk's data
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    size = 0  # not chunked framing: the answer is broken, end it here
                if size == 0:
                    self._done = True
                    break
                self._chunk_left = size
            if not self._buffer and not self._fill():
                self._done = True
                break
            data = self._buffer[: min(self._chunk_left, _CHUNK)]
            self._buffer = self._buffer[len(data) :]
            self._chunk_left -= len(data)
            return data
        return b""

    def read_all(self) -> bytes:
        parts = []
        while chunk := self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HijackedStream:
    """A connection taken over after ``101 UPGRADED`` (attach, exec start).

    ``frames()`` yields ``(stream, data)`` until the daemon closes its side; ``send()``
    writes to the container's stdin and ``close_stdin()`` half-closes the socket, which
    the daemon passes on as the end of stdin while output still flows back.
    """

    def __init__(self, sock: socket.socket, content_type: str, leftover: bytes = b"") -> None:
        self.sock = sock
        self.content_type = content_type
        self._leftover = leftover
        self._stdin_closed = False

    @property
    def raw(self) -> bool:
        """A TTY's stream: raw bytes rather than multiplexed frames."""
        return self.content_type != MULTIPLEXED_STREAM

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> bytes:
        """The next bytes of the stream as they arrive; ``b""`` at its end."""
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        try:
            return self.sock.recv(_CHUNK)
        except ConnectionResetError:
            return b""

    def frames(self) -> Iterator[tuple[int, bytes]]:
        return iter_frames(self.recv, raw=self.raw)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_stdin(self) -> None:
        if self._stdin_closed:
            return
        self._stdin_closed = True
        try:
            self.sock.shutdown(1)  # socket.SHUT_WR
        except OSError:
            pass

    def shutdown(self) -> None:
        """End both directions now: a reader blocked in :meth:`recv` (another thread)
        wakes with the end of the stream (a detach, where the daemon may keep its side)."""
        self._stdin_closed = True
        try:
            self.sock.shutdown(2)  # socket.SHUT_RDWR
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> HijackedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
