"""Docker's json-file log format: one JSON object per line, rotated by size.

``{"log": "hi\\n", "stream": "stdout", "time": "2024-05-01T10:00:00.123456789Z"}``

The writer lives in the monitor (stdlib only, nothing heavy: it runs beside every
container); the reader serves ``GET /containers/{id}/logs`` in the daemon. Berth
rotates by default (10 MB, 3 files), where Docker lets logs grow without bound.
"""

from __future__ import annotations

import json
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 3
# Docker splits a line longer than this into several entries (a "partial" message).
MAX_LINE = 16 * 1024


def rfc3339nano(ns: int | None = None) -> str:
    """UTC time with nine fractional digits, as Docker's RFC3339NanoFixed."""
    if ns is None:
        ns = time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def parse_size(value: str | int | None, default: int = DEFAULT_MAX_SIZE) -> int:
    """Docker's --log-opt max-size: ``10m``, ``512k``, ``1g`` or bytes; -1 or 0 = no limit."""
    if value is None or value == "":
        return default
    if isinstance(value, int):
        return value
    text = value.strip().lower().removesuffix("b")
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class JsonLogWriter:
    """Appends entries to ``path``; past ``max_size`` bytes the file becomes ``path.1``
    (``path.1`` becomes ``path.2`` ...) and at most ``max_files`` files are kept."""

    def __init__(
        self, path: str, max_size: int = DEFAULT_MAX_SIZE, max_files: int = DEFAULT_MAX_FILES
    ) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max(1, max_files)
        self._partial: dict[str, bytes] = {}
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, data: bytes) -> None:
        """Feed raw output: complete lines become entries, the rest waits for more."""
        buffered = self._partial.pop(stream, b"") + data
        lines = buffered.split(b"\n")
        rest = lines.pop()
        for line in lines:
            self._emit(stream, line + b"\n")
        while len(rest) >= MAX_LINE:
            self._emit(stream, rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if rest:
            self._partial[stream] = rest

    def flush(self) -> None:
        """Write what is left of unterminated lines (the process has ended)."""
        for stream, rest in list(self._partial.items()):
            self._emit(stream, rest)
        self._partial.clear()

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _emit(self, stream: str, data: bytes) -> None:
        entry = {
            "log": data.decode("utf-8", "replace"),
            "stream": stream,
            "time": rfc3339nano(),
        }
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        if self.max_size > 0 and self._size > 0 and self._size + len(line) > self.max_size:
            self._rotate()
        os.write(self._fd, line)
        self._size += len(line)

    def _rotate(self) -> None:
        os.close(self._fd)
        if self.max_files > 1:
            for index in range(self.max_files - 1, 0, -1):
                source = self.path if index == 1 else f"{self.path}.{index - 1}"
                try:
                    os.rename(source, f"{self.path}.{index}")
                except FileNotFoundError:
                    pass
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        else:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_TRUNC
        self._fd = os.open(self.path, flags, 0o640)
        self._size = 0


def log_files(path: str) -> list[str]:
    """The log's files, oldest first (``path.N`` ... ``path.1``, ``path``)."""
    rotated = []
    index = 1
    while os.path.exists(f"{path}.{index}"):
        rotated.append(f"{path}.{index}")
        index += 1
    files = list(reversed(rotated))
    if os.path.exists(path):
        files.append(path)
    return files


def parse_line(line: bytes) -> tuple[str, str, str] | None:
    """(stream, log text, time) of one line, or None for a torn or foreign line."""
    try:
        entry = json.loads(line)
        return str(entry["stream"]), str(entry["log"]), str(entry["time"])
    except (ValueError, KeyError, TypeError):
        return None


def read_entries(path: str) -> Iterator[tuple[str, str, str]]:
    """Every complete entry of the log, oldest first."""
    for name in log_files(path):
        try:
            with open(name, "rb") as f:
                for line in f:
                    if line.endswith(b"\n"):
                        parsed = parse_line(line)
                        if parsed is not None:
                            yield parsed
        except FileNotFoundError:
            continue  # rotated away while we read
