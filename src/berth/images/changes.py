"""Dockerfile instructions as ``docker import --change`` and ``docker commit --change``
send them ("CMD ["echo"]", "ENV A=1", "EXPOSE 80"), turned into image config keys.

Only the instructions that change the config are accepted, as in Docker; anything else
(RUN, COPY, ...) is refused with one line naming what is allowed.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from typing import Any

from berth.errors import InvalidArgument

ALLOWED = (
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
)

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def parse_go_duration(text: str) -> int:
    """Go's time.ParseDuration ("1h30m", "90s", "500ms") in nanoseconds."""
    value = text.strip()
    if value == "0":
        return 0
    total = 0
    position = 0
    for match in _DURATION_RE.finditer(value):
        if match.start() != position:
            break
        total += int(float(match.group(1)) * _DURATION_NS[match.group(2)])
        position = match.end()
    if position != len(value) or not value:
        raise InvalidArgument(f"invalid duration {text!r}: use a number and a unit, like 30s")
    return total


def _json_or_shell(args: str) -> list[str]:
    """The exec form (a JSON array of strings) or the shell form (``/bin/sh -c``)."""
    text = args.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", text]


def _pairs(instruction: str, args: str) -> list[tuple[str, str]]:
    """``KEY=VALUE ...`` (quotes allowed) or the legacy ``KEY VALUE`` form."""
    try:
        words = shlex.split(args)
    except ValueError as e:
        raise InvalidArgument(f"invalid {instruction} {args!r}: {e}") from None
    if not words:
        raise InvalidArgument(f"{instruction} needs at least one argument")
    if "=" not in words[0]:
        key, _, value = args.strip().partition(" ")
        if not value.strip():
            raise InvalidArgument(f"{instruction} {key} needs a value: use {key}=VALUE")
        return [(key, value.strip())]
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"invalid {instruction} {word!r}: expected KEY=VALUE")
        out.append((key, value))
    return out


def _healthcheck(args: str) -> dict[str, Any]:
    words = args.split()
    check: dict[str, Any] = {}
    flags = {
        "--interval": "Interval",
        "--timeout": "Timeout",
        "--start-period": "StartPeriod",
        "--start-interval": "StartInterval",
    }
    while words and words[0].startswith("--"):
        flag, _, value = words.pop(0).partition("=")
        if flag in flags:
            check[flags[flag]] = parse_go_duration(value)
        elif flag == "--retries":
            try:
                check["Retries"] = int(value)
            except ValueError:
                raise InvalidArgument(f"invalid HEALTHCHECK --retries {value!r}") from None
        else:
            raise InvalidArgument(f"unknown HEALTHCHECK flag {flag}")
    if not words:
        raise InvalidArgument("HEALTHCHECK needs NONE or CMD ...")
    kind = words[0].upper()
    rest = args.split(words[0], 1)[1].strip() if len(words) > 1 else ""
    if kind == "NONE":
        return {"Test": ["NONE"]}
    if kind != "CMD" or not rest:
        raise InvalidArgument("HEALTHCHECK needs NONE or CMD COMMAND")
    command = _json_or_shell(rest)
    if command[:2] == ["/bin/sh", "-c"] and not rest.startswith("["):
        check["Test"] = ["CMD-SHELL", rest]
    else:
        check["Test"] = ["CMD", *command]
    return check


def apply_changes(changes: list[str], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The container config (Docker's keys) after the instructions in ``changes``
    (one per item, or several lines in one; ``#`` comments skipped)."""
    out: dict[str, Any] = dict(config or {})
    cmd_set = False
    for change in changes:
        for line in change.splitlines():
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            word, _, args = text.partition(" ")
            instruction = word.upper()
            args = args.strip()
            if instruction not in ALLOWED:
                raise InvalidArgument(
                    f"{word} is not a valid change command: use one of {', '.join(ALLOWED)}"
                )
            if not args:
                raise InvalidArgument(f"{instruction} needs an argument")
            cmd_set = _apply(out, instruction, args, cmd_set)
    return out


def _apply(out: dict[str, Any], instruction: str, args: str, cmd_set: bool) -> bool:
    """One instruction into ``out``; returns whether a CMD has been set by the changes."""
    if instruction in ("CMD", "ENTRYPOINT"):
        out["Cmd" if instruction == "CMD" else "Entrypoint"] = _json_or_shell(args)
        if instruction == "CMD":
            return True
        if not cmd_set:
            out["Cmd"] = None  # a new entrypoint drops the inherited command, as Docker
    elif instruction == "ENV":
        env = [e for e in out.get("Env") or [] if isinstance(e, str)]
        for key, value in _pairs("ENV", args):
            env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
        out["Env"] = env
    elif instruction == "LABEL":
        labels = dict(out.get("Labels") or {})
        labels.update(_pairs("LABEL", args))
        out["Labels"] = labels
    elif instruction == "EXPOSE":
        ports = dict(out.get("ExposedPorts") or {})
        for port in args.split():
            number, _, proto = port.partition("/")
            if not number.replace("-", "").isdigit():
                raise InvalidArgument(f"invalid port {port!r} in EXPOSE")
            ports[f"{number}/{(proto or 'tcp').lower()}"] = {}
        out["ExposedPorts"] = ports
    elif instruction == "VOLUME":
        volumes = dict(out.get("Volumes") or {})
        paths = _json_or_shell(args) if args.startswith("[") else args.split()
        if paths[:2] == ["/bin/sh", "-c"]:
            paths = args.strip("[]").split()
        for path in paths:
            volumes[path] = {}
        out["Volumes"] = volumes
    elif instruction == "USER":
        out["User"] = args
    elif instruction == "WORKDIR":
        out["WorkingDir"] = posixpath.normpath(posixpath.join(out.get("WorkingDir") or "/", args))
    elif instruction == "STOPSIGNAL":
        out["StopSignal"] = args
    elif instruction == "ONBUILD":
        out["OnBuild"] = [*(out.get("OnBuild") or []), args]
    elif instruction == "HEALTHCHECK":
        out["Healthcheck"] = _healthcheck(args)
    return cmd_set
