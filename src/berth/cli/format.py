"""Output the way the docker CLI writes it: aligned tables, durations, sizes, templates.

Standard library only and cheap to import (``berth ps`` loads it).
"""

from __future__ import annotations

import json
import re
import time

from berth.units import human_duration

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up; annotations stay strings here
    from typing import Any

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def ago(timestamp: float, now: float | None = None) -> str:
    return human_duration((now if now is not None else time.time()) - timestamp) + " ago"


def human_size(size: float, precision: int = 3) -> str:
    """go-units HumanSizeWithPrecision: decimal units, ``precision`` significant digits."""
    i = 0
    while size >= 1000 and i < len(_DECIMAL_UNITS) - 1:
        size /= 1000
        i += 1
    return f"{size:.{precision}g}{_DECIMAL_UNITS[i]}"


def binary_size(size: float) -> str:
    """go-units BytesSize: "23.54GiB"."""
    i = 0
    while size >= 1024 and i < len(_BINARY_UNITS) - 1:
        size /= 1024
        i += 1
    return f"{size:.4g}{_BINARY_UNITS[i]}"


def ellipsis(text: str, width: int) -> str:
    """Docker's formatter.Ellipsis: at most ``width`` characters, the last one "…"."""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…"


def go_quote(text: str) -> str:
    """strconv.Quote for what a command line holds."""
    return json.dumps(text, ensure_ascii=False)


def short_id(value: str) -> str:
    return value.split(":", 1)[-1][:12]


def familiar(name: str) -> str:
    """``docker.io/library/busybox:latest`` -> ``busybox:latest``, as docker shows names."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def split_tag(reference: str) -> tuple[str, str]:
    """``repo:tag`` -> (repo, tag); the tag defaults to ``latest``; a digest stays whole."""
    if "@" in reference:
        return reference, ""
    repo, sep, tag = reference.rpartition(":")
    if not sep or "/" in tag:
        return reference, "latest"
    return repo, tag


def table(rows: list[list[str]]) -> str:
    """Go's tabwriter as docker uses it (minwidth 10, padding 3): each column but the last
    as wide as its widest cell plus three spaces, at least ten."""
    if not rows:
        return ""
    columns = max(len(row) for row in rows)
    widths = [0] * columns
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell) + 3, 10)
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + (row[-1] if row else ""))
    return "\n".join(lines) + "\n"


# ---- Go templates (the part people use) -----------------------------------------------------

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")


def _lookup(data: Any, path: str) -> Any:
    if path in ("", "."):
        return data
    value = data
    for depth, part in enumerate(path.lstrip(".").split(".")):
        if value is None:  # a field of a null map: Go prints <no value>
            return None
        if isinstance(value, dict):
            if part in value:
                value = value[part]
                continue
            lowered = {k.lower(): k for k in value if isinstance(k, str)}
            if part.lower() in lowered:
                value = value[lowered[part.lower()]]
                continue
            if depth > 0:  # a missing key of a map (Labels, Options, ...): <no value>
                return None
        raise ValueError(f"template: can't evaluate field {part}")
    return value


def _text(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _argument(data: Any, token: str) -> Any:
    if token.startswith('"') and token.endswith('"'):
        return json.loads(token)
    return _lookup(data, token)


def _evaluate(data: Any, action: str) -> str:
    words = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', action)
    if not words:
        return ""
    function, args = words[0], words[1:]
    if function.startswith("."):
        return _text(_lookup(data, function))
    values = [_argument(data, a) for a in args]
    if function == "json" and len(values) == 1:
        return json.dumps(values[0])
    if function == "join" and len(values) == 2:
        return str(values[1]).join(_text(v) for v in values[0] or [])
    if function == "index" and len(values) == 2:
        container, key = values
        try:
            return _text(container[key])
        except (KeyError, IndexError, TypeError):
            return "<no value>"
    if function in ("upper", "lower", "title") and len(values) == 1:
        return getattr(_text(values[0]), function)()
    if function == "println":
        return " ".join(_text(v) for v in values) + "\n"
    raise ValueError(f"template: unsupported action {{{{{action}}}}}")


def render(template: str, data: Any) -> str:
    """A Go template's common subset: ``{{.A.B}}``, ``{{json .X}}``, ``{{join .L ","}}``,
    ``{{index .M "k"}}``, ``{{upper .X}}``; ``\\t`` and ``\\n`` as docker expands them."""
    template = template.replace("\\t", "\t").replace("\\n", "\n")
    return _ACTION.sub(lambda m: _evaluate(data, m.group(1)), template)


def template_fields(template: str) -> list[str]:
    """The fields a table template shows, for its header (``{{.ID}}`` -> ``ID``)."""
    return [m.group(1).split()[-1].lstrip(".") for m in _ACTION.finditer(template)]


def rows(
    items: list[dict[str, Any]], form: str | None, default: str, headers: dict[str, str]
) -> str:
    """Rows as docker's list commands print them: ``json`` lines, a Go template per row,
    or a table (``table TEMPLATE``, else ``default``, tab-separated fields) whose header
    names come from ``headers`` (else the field, upper-cased)."""
    if form == "json":
        return "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in items)
    if form and not form.startswith("table"):
        return "".join(render(form, row) + "\n" for row in items)
    template = (form or "")[len("table") :].strip() or default
    names = template_fields(template)
    lines = [[headers.get(n, n.upper()) for n in names]]
    lines += [render(template, row).split("\t") for row in items]
    return table(lines)


def inspected(items: list[Any], form: str | None, *, sort_keys: bool = False) -> str:
    """What ``inspect`` prints: the template once per object, else one JSON array."""
    if form:
        return "".join(render(form, item) + "\n" for item in items)
    return json.dumps(items, indent=4, sort_keys=sort_keys) + "\n"
