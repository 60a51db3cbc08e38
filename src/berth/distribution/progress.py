"""Pull/push progress: events, Docker's JSON progress stream, and a terminal renderer.

The Engine API streams pull and push progress as JSON lines that the docker CLI,
docker-py and compose parse; ``docker_json_line`` writes them byte for byte as
dockerd's streamformatter does (key order, Go's HTML escaping, ``\\r\\n``), so any
client renders Berth's progress as it renders Docker's.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

# Statuses that dockerd writes as plain messages (progress.Message): no progressDetail.
_MESSAGE_PREFIXES = ("Pulling from ", "The push refers to repository ")
_PROGRESS_WIDTH = 50
_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


@dataclass(frozen=True)
class ProgressEvent:
    """One progress update; ``id`` is a layer's digest (shortened on output) or a tag."""

    id: str | None
    status: str
    current: int | None = None
    total: int | None = None


def short_id(value: str) -> str:
    """Docker's TruncateID: the first 12 hex digits of a digest, other ids as they are."""
    if ":" in value:
        algorithm, _, hexpart = value.partition(":")
        if algorithm in ("sha256", "sha384", "sha512"):
            return hexpart[:12]
    return value


def human_size(size: float) -> str:
    """go-units HumanSize: decimal units, four significant digits ("1.234MB", "886.2kB")."""
    i = 0
    while size >= 1000 and i < len(_UNITS) - 1:
        size /= 1000
        i += 1
    return f"{size:.4g}{_UNITS[i]}"


def progress_bar(current: int, total: int | None) -> str:
    """jsonmessage.JSONProgress.String() as dockerd formats it (a 200-column width)."""
    if current <= 0 and (total is None or total <= 0):
        return ""
    if total is None or total <= 0:
        return f"{human_size(current):>8}"
    filled = min(int(current / total * 100) // 2, _PROGRESS_WIDTH)
    bar = "[" + "=" * filled + ">" + " " * (_PROGRESS_WIDTH - filled) + "] "
    if current > total:
        return bar + f"{human_size(current):>8}"
    return bar + f"{human_size(current):>8}/{human_size(total)}"


def to_message(event: ProgressEvent) -> dict[str, Any]:
    """The JSONMessage object dockerd would send for ``event``, keys in Docker's order."""
    out: dict[str, Any] = {"status": event.status}
    is_message = event.id is None or event.status.startswith(_MESSAGE_PREFIXES)
    if not is_message:
        detail: dict[str, int] = {}
        if event.current:
            detail["current"] = event.current
        if event.total:
            detail["total"] = event.total
        out["progressDetail"] = detail
        bar = progress_bar(event.current or 0, event.total) if detail else ""
        if bar:
            out["progress"] = bar
    if event.id is not None:
        # Layers go by their short id; a tag or digest being pulled keeps its full form.
        out["id"] = event.id if is_message else short_id(event.id)
    return out


def _go_json(value: Any) -> str:
    """json.Marshal's output: compact, UTF-8, with <, > and & escaped as Go escapes them."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def docker_json_line(event: ProgressEvent) -> bytes:
    """One line of Docker's JSON progress stream, ``\\r\\n``-terminated as dockerd ends it."""
    return (_go_json(to_message(event)) + "\r\n").encode()


def pull_status_line(reference: str, downloaded: bool) -> ProgressEvent:
    """The last line of a pull, as Docker words it."""
    if downloaded:
        return ProgressEvent(None, f"Status: Downloaded newer image for {reference}")
    return ProgressEvent(None, f"Status: Image is up to date for {reference}")


# --- the terminal renderer -------------------------------------------------------------


class ProgressRenderer:
    """Renders progress events (or decoded JSON messages) as live per-layer lines.

    On a terminal with ``rich`` installed, each layer keeps one line that updates in
    place; otherwise each status change is printed once, as ``docker pull`` does when
    its output is not a terminal (the many "Downloading" updates are not repeated).
    """

    def __init__(self, stream: IO[str] | None = None, *, live: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        if live is None:
            live = bool(getattr(self._stream, "isatty", lambda: False)())
        self._order: list[str] = []
        self._lines: dict[str, tuple[str, str]] = {}
        self._last_status: dict[str, str] = {}
        self._live: Any = None
        self._console: Any = None
        self._last_refresh = 0.0
        if live:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:
                pass
            else:
                self._console = Console(file=self._stream)
                self._live = Live(
                    console=self._console,
                    auto_refresh=False,
                    transient=False,
                    redirect_stdout=False,
                )
                self._live.start()

    def __call__(self, event: ProgressEvent) -> None:
        self.feed(to_message(event))

    def feed(self, message: dict[str, Any]) -> None:
        """Show one decoded JSON progress message (from the daemon or from ``to_message``)."""
        if message.get("error"):
            self._print(f"error: {message['error']}")
            return
        status = str(message.get("status") or message.get("stream") or "")
        ident = message.get("id")
        if not ident:
            self._print(status.rstrip("\n"))
            return
        ident = str(ident)
        if "progressDetail" not in message:
            # A message about a tag ("latest: Pulling from library/busybox"): not a layer line.
            self._print(f"{ident}: {status}")
            return
        bar = str(message.get("progress") or "")
        if self._live is not None:
            if ident not in self._lines:
                self._order.append(ident)
            self._lines[ident] = (status, bar)
            self._refresh(force=not bar)
        elif self._last_status.get(ident) != status:
            self._last_status[ident] = status
            self._print(f"{ident}: {status}")

    def _print(self, text: str) -> None:
        if self._live is not None:
            self._refresh(force=True)
            self._console.print(text, markup=False, highlight=False)
        else:
            self._stream.write(text + "\n")
            self._stream.flush()

    def _refresh(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_refresh < 0.1:
            return
        self._last_refresh = now
        from rich.text import Text

        body = Text()
        for ident in self._order:
            status, bar = self._lines[ident]
            body.append(f"{ident}: {status} {bar}".rstrip() + "\n")
        self._live.update(body, refresh=True)

    def close(self) -> None:
        """Draw the final state and stop the live display."""
        if self._live is not None:
            self._refresh(force=True)
            self._live.stop()
            self._live = None
