"""Berth's log: runc's ``--log`` file with text or JSON lines, shared by all layers.

containerd's shim reads the last error from this file, so errors are written there
as well as to stderr. The stdlib logging package is not used: importing it costs
milliseconds on every container start.
"""

from __future__ import annotations

import json
import os
import sys
import time

_path: str | None = None
_format = "text"
_debug = False


def configure(path: str | None, fmt: str = "text", debug: bool = False) -> None:
    global _path, _format, _debug
    _path, _format, _debug = path, fmt, debug


def write(level: str, message: str) -> None:
    if level == "debug" and not _debug:
        return
    if _path is None:
        if level in {"warning", "debug"}:
            print(f"berth-runtime: {level}: {message}", file=sys.stderr)
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if _format == "json":
        line = json.dumps({"level": level, "msg": message, "time": stamp})
    else:
        line = f'time="{stamp}" level={level} msg="{message}"'
    try:
        fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def debugging() -> bool:
    return _debug


def debug(message: str, *args: object) -> None:
    if _debug:
        write("debug", message % args if args else message)


def warning(message: str, *args: object) -> None:
    write("warning", message % args if args else message)


def error(message: str, *args: object) -> None:
    write("error", message % args if args else message)
