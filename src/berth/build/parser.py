"""Dockerfile text -> instructions, with Docker's exact line rules.

The rules are those of BuildKit's ``frontend/dockerfile/parser`` (which Docker's legacy
builder shares), re-implemented: parser directives only at the very top, comments
(also between continuation lines), the escape character as line continuation, empty
continuation lines skipped with a warning, JSON (exec) form with a fall back to shell
form when the JSON is not valid, heredocs for RUN/COPY/ADD, per-instruction argument
shapes, builder flags. On top of the reference's parse step this module also does the
validation its ``instructions`` package does (argument counts, flags, stage names), so
every static mistake is reported here with its line and column.

Nothing is expanded here: ``expand.py`` does ``$VAR`` substitution with the state of a
running build.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field

from berth.build.errors import BuildError
from berth.build.shell import LexError, ShellLex

DEFAULT_ESCAPE = "\\"
DIRECTIVES = ("syntax", "escape", "check")

# Instruction name -> how its arguments are shaped (mirrors the reference's dispatch).
_SHAPES = {
    "add": "json_list",
    "arg": "name_or_name_val",
    "cmd": "maybe_json",
    "copy": "json_list",
    "entrypoint": "maybe_json",
    "env": "name_val",
    "expose": "whitespace",
    "from": "whitespace",
    "healthcheck": "health",
    "label": "name_val",
    "maintainer": "string",
    "onbuild": "sub",
    "run": "maybe_json",
    "shell": "maybe_json",
    "stopsignal": "string",
    "user": "string",
    "volume": "json_list",
    "workdir": "string",
}
INSTRUCTIONS = frozenset(name.upper() for name in _SHAPES)
_HEREDOC_INSTRUCTIONS = frozenset({"ADD", "COPY", "RUN"})

# Flags each instruction accepts: name -> kind ("bool", "string" or "strings": repeatable).
_FLAGS: dict[str, dict[str, str]] = {
    "ADD": {
        "chown": "string",
        "chmod": "string",
        "link": "bool",
        "keep-git-dir": "bool",
        "checksum": "string",
        "unpack": "bool",
        "exclude": "strings",
    },
    "COPY": {
        "chown": "string",
        "from": "string",
        "chmod": "string",
        "link": "bool",
        "exclude": "strings",
        "parents": "bool",
    },
    "FROM": {"platform": "string"},
    "RUN": {"mount": "strings", "network": "string", "security": "string", "device": "strings"},
    "HEALTHCHECK": {
        "interval": "string",
        "timeout": "string",
        "start-period": "string",
        "start-interval": "string",
        "retries": "string",
    },
}

_WS = " \t\n\v\f\r\x85\xa0"  # Go's unicode.IsSpace for the characters that matter here
_RE_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_RE_DIRECTIVE = re.compile(r"^([a-zA-Z][a-zA-Z0-9]*)[ \t\n\f\r]*=[ \t\n\f\r]*(.+?)[ \t\n\f\r]*\Z")
_RE_HEREDOC = re.compile(r"^(\d*)<<(-?)[ \t\n\f\r]*([^<]*)\Z")
_RE_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_RE_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*\Z")
_RE_ONBUILD_PREFIX = re.compile(r"^[ \t\n\v\f\r]*ONBUILD[ \t\n\v\f\r]*", re.IGNORECASE)
_RE_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


@dataclass(frozen=True)
class Heredoc:
    """One here-document attached to an instruction.

    ``content`` is as written (every line with its newline); ``data`` applies ``<<-``
    tab stripping. ``expand`` is false when any part of the delimiter was quoted.
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0

    @property
    def data(self) -> str:
        """The content as the file or script gets it (leading tabs gone for ``<<-``)."""
        return _RE_LEADING_TABS.sub("", self.content) if self.chomp else self.content


@dataclass
class Instruction:
    """One parsed instruction, its source position, and its arguments unexpanded.

    ``args`` has the reference's per-instruction shape: for ENV and LABEL it is
    (key, value, separator) triples flattened, for HEALTHCHECK the type then the
    command, for the JSON form the array's strings; otherwise words or the whole rest
    of the line. ``options`` holds the parsed flags (bool, str, or list for repeatable
    flags); ``flags`` the flag words as written.
    """

    cmd: str
    args: list[str]
    original: str
    raw: str
    start_line: int
    end_line: int
    column: int = 1
    flags: list[str] = field(default_factory=list)
    options: dict[str, str | bool | list[str]] = field(default_factory=dict)
    json: bool = False
    heredocs: list[Heredoc] = field(default_factory=list)
    sub: Instruction | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """ENV/LABEL key/value pairs, unexpanded."""
        return [(self.args[i], self.args[i + 1]) for i in range(0, len(self.args) - 2, 3)]

    @property
    def arg_pairs(self) -> list[tuple[str, str | None]]:
        """ARG names with their default (None when the ARG has none), unexpanded."""
        out: list[tuple[str, str | None]] = []
        for word in self.args:
            key, sep, value = word.partition("=")
            out.append((key, value if sep else None))
        return out

    @property
    def expression(self) -> str:
        """For ONBUILD: the trigger as stored in the image config (heredocs included)."""
        text = _RE_ONBUILD_PREFIX.sub("", self.original, count=1)
        for doc in self.heredocs:
            text += "\n" + doc.content + doc.name
        return text

    def option(self, name: str) -> str:
        """A string flag's value, or '' when it was not given."""
        value = self.options.get(name, "")
        return value if isinstance(value, str) else ""

    def error(self, message: str, filename: str = "Dockerfile") -> BuildError:
        """An error located at this instruction."""
        return BuildError(message, self.start_line, self.column, filename)


@dataclass
class Dockerfile:
    """The whole parsed file."""

    instructions: list[Instruction]
    escape: str = DEFAULT_ESCAPE
    directives: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    filename: str = "Dockerfile"


class _Directives:
    """The parser-directive state machine: only leading ``# key=value`` comments count."""

    def __init__(self) -> None:
        self.done = False
        self.found: dict[str, str] = {}
        self.escape = DEFAULT_ESCAPE
        self.continuation = _continuation_regex(DEFAULT_ESCAPE)

    def feed(self, line: str) -> bool:
        """Look at one line; True when it was a directive."""
        if self.done:
            return False
        if not line.startswith("#"):
            self.done = True
            return False
        m = _RE_DIRECTIVE.match(line[1:].lstrip(_WS))
        if m is None or m.group(1).lower() not in DIRECTIVES:
            self.done = True
            return False
        key, value = m.group(1).lower(), m.group(2)
        if key in self.found:
            raise ValueError(f"only one {key} parser directive can be used")
        if key == "escape":
            if value not in ("`", "\\"):
                raise ValueError(f"invalid escape token '{value}' does not match ` or \\")
            self.escape = value
            self.continuation = _continuation_regex(value)
        self.found[key] = value
        return True


def _continuation_regex(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")


def _is_comment(line: str) -> bool:
    return line.lstrip(_WS).startswith("#")


def _split_lines(text: str) -> list[str]:
    """Lines with their endings kept, split only on LF (as the reference's scanner)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def parse(source: str | bytes, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile; raise BuildError naming the line for anything malformed."""
    if isinstance(source, bytes):
        source = source.decode("utf-8", errors="surrogateescape")
    if source.startswith("\ufeff"):
        source = source[1:]
    lines = _split_lines(source)
    d = _Directives()
    result = Dockerfile([], filename=filename)
    comments: list[str] = []
    i = 0
    current = 0

    def process(raw: str, strip_left: bool) -> tuple[str, bool]:
        token = raw.rstrip("\r\n")
        if strip_left:
            token = token.lstrip(_WS)
        try:
            directive = d.feed(token)
        except ValueError as exc:
            raise BuildError(str(exc), current + 1, 1, filename) from None
        return ("" if _is_comment(token) else token), directive

    def trim_continuation(token: str) -> tuple[str, bool]:
        if d.continuation.search(token):
            return d.continuation.sub(lambda m: m.group(1) or "", token), False
        return token, True

    while i < len(lines):
        raw = lines[i]
        i += 1
        if _is_comment(raw):
            text = raw.rstrip("\r\n").lstrip(_WS)[1:].strip(_WS)
            if text:
                comments.append(text)
            else:
                comments = []
        token, directive = process(raw, True)
        if directive and comments:
            comments.pop()
        current += 1
        start = current
        column = 1 + len(raw) - len(raw.lstrip(_WS)) if raw.strip(_WS) else 1
        token, eol = trim_continuation(token)
        if eol and not token:
            continue
        buf = [token]
        empty_continuation = False
        while not eol and i < len(lines):
            raw2 = lines[i]
            i += 1
            token2, _ = process(raw2, False)
            current += 1
            if _is_comment(raw2):
                continue
            if not token2.rstrip("\r\n").lstrip(_WS):
                empty_continuation = True
                continue
            token2, eol = trim_continuation(token2)
            buf.append(token2)
        line = "".join(buf)
        if empty_continuation:
            result.warnings.append(f"Empty continuation line found in: {line}")
        try:
            ins = _new_instruction(line, d.escape)
        except BuildError as exc:
            raise BuildError(exc.reason, start, column, filename) from None
        ins.start_line, ins.column, ins.comments = start, column, comments
        target = ins.sub if ins.cmd == "ONBUILD" and ins.sub is not None else ins
        if target.cmd in _HEREDOC_INSTRUCTIONS and not target.json and "<<" in line:
            try:
                docs = _heredocs_from_line(line)
            except LexError as exc:
                raise BuildError(exc.reason, start, column, filename) from None
            for doc in docs:
                content: list[str] = []
                terminated = False
                while i < len(lines):
                    body = lines[i]
                    i += 1
                    current += 1
                    candidate = body.rstrip("\r\n")
                    if doc.chomp:
                        candidate = candidate.lstrip("\t")
                    if candidate == doc.name:
                        terminated = True
                        break
                    content.append(body)
                if not terminated:
                    raise BuildError("unterminated heredoc", start, column, filename)
                ins.heredocs.append(
                    Heredoc(doc.name, "".join(content), doc.expand, doc.chomp, doc.fd)
                )
            if target is not ins:
                target.heredocs = ins.heredocs
        ins.end_line = current
        ins.raw = "".join(lines[start - 1 : current])
        try:
            _validate(ins)
        except BuildError as exc:
            raise BuildError(exc.reason, start, column, filename) from None
        result.instructions.append(ins)
        comments = []

    if not result.instructions:
        raise BuildError("file with no instructions", current, None, filename)
    result.escape = d.escape
    result.directives = dict(d.found)
    return result


def _split_command(line: str, escape: str) -> tuple[str, list[str], str]:
    parts = _RE_WHITESPACE.split(line.strip(_WS), maxsplit=1)
    if len(parts) < 2:
        return parts[0], [], ""
    rest, flags = _extract_flags(parts[1], escape)
    return parts[0], flags, rest.strip(_WS)


def _extract_flags(line: str, escape: str) -> tuple[str, list[str]]:
    """Leading ``--flag`` words (quotes and escapes processed); the rest of the line."""
    words: list[str] = []
    buf: list[str] = []
    blank_ok = False
    phase = "spaces"
    quote = ""
    pos = 0
    n = len(line)
    while pos <= n:
        ch = line[pos] if pos < n else ""
        if phase == "spaces":
            if pos == n:
                break
            if ch in _WS:
                pos += 1
                continue
            if ch != "-" or pos + 1 == n or line[pos + 1] != "-":
                return line[pos:], words
            phase = "word"
        if pos == n:
            word = "".join(buf)
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == "word":
            if ch in _WS:
                word = "".join(buf)
                phase = "spaces"
                if word == "--":
                    return line[pos:], words
                if blank_ok or word:
                    words.append(word)
                buf = []
                blank_ok = False
                pos += 1
                continue
            if ch in "'\"":
                quote = ch
                blank_ok = True
                phase = "quote"
                pos += 1
                continue
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = line[pos]
            buf.append(ch)
            pos += 1
            continue
        # inside quotes
        if ch == quote:
            phase = "word"
            pos += 1
            continue
        if ch == escape:
            if pos + 1 == n:
                phase = "word"
                pos += 1
                continue
            pos += 1
            ch = line[pos]
        buf.append(ch)
        pos += 1
    return "", words


def _parse_words(rest: str, escape: str) -> list[str]:
    """Quote-aware word split that keeps the quotes (ENV/LABEL/ARG before expansion)."""
    words: list[str] = []
    buf: list[str] = []
    phase = "spaces"
    quote = ""
    blank_ok = False
    pos = 0
    n = len(rest)
    while pos <= n:
        ch = rest[pos] if pos < n else ""
        if phase == "spaces":
            if pos == n:
                break
            if ch in _WS:
                pos += 1
                continue
            phase = "word"
        if pos == n:
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == "word":
            if ch in _WS:
                phase = "spaces"
                if blank_ok or buf:
                    words.append("".join(buf))
                buf = []
                blank_ok = False
                pos += 1
                continue
            if ch in "'\"":
                quote = ch
                blank_ok = True
                phase = "quote"
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue
                buf.append(ch)
                pos += 1
                ch = rest[pos]
            buf.append(ch)
            pos += 1
            continue
        # inside quotes
        if ch == quote:
            phase = "word"
        if ch == escape and quote != "'":
            if pos + 1 == n:
                phase = "word"
                pos += 1
                continue
            pos += 1
            buf.append(ch)
            ch = rest[pos]
        buf.append(ch)
        pos += 1
    return words


class _NotStrings(Exception):
    pass


def _reject_constant(name: str) -> object:
    raise ValueError(name)


def _parse_json(rest: str) -> list[str] | None:
    """The JSON array's strings; None when ``rest`` is not a JSON array at all."""
    rest = rest.lstrip(_WS)
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest, parse_constant=_reject_constant)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise _NotStrings
    return value


def _new_instruction(line: str, escape: str) -> Instruction:
    cmd, flags, rest = _split_command(line, escape)
    name = cmd.upper()
    shape = _SHAPES.get(cmd.lower())
    if shape is None:
        raise BuildError(f"unknown instruction: {cmd}")
    ins = Instruction(name, [], line, "", 0, 0, flags=flags)
    try:
        _shape_args(ins, shape, rest, escape)
    except _NotStrings:
        raise BuildError(
            "when using JSON array syntax, arrays must be comprised of strings only"
        ) from None
    return ins


def _shape_args(ins: Instruction, shape: str, rest: str, escape: str) -> None:
    if shape in ("maybe_json", "json_list"):
        if shape == "maybe_json" and not rest:
            return
        parsed = _parse_json(rest)
        if parsed is not None:
            ins.args, ins.json = parsed, True
        elif shape == "maybe_json":
            ins.args = [rest]
        else:
            ins.args = _RE_WHITESPACE.split(rest) if rest else []
    elif shape == "whitespace":
        ins.args = _RE_WHITESPACE.split(rest) if rest else []
    elif shape == "string":
        ins.args = [rest] if rest else []
    elif shape == "name_or_name_val":
        ins.args = _parse_words(rest, escape)
    elif shape == "name_val":
        ins.args = _parse_name_val(rest, ins.cmd, escape)
    elif shape == "health":
        sep = 0
        while sep < len(rest) and rest[sep] not in _WS:
            sep += 1
        if sep == 0:
            return
        nxt = sep
        while nxt < len(rest) and rest[nxt] in _WS:
            nxt += 1
        ins.args = [rest[:sep]]
        cmd_part = rest[nxt:]
        if cmd_part:
            parsed = _parse_json(cmd_part)
            if parsed is not None:
                ins.args += parsed
                ins.json = True
            else:
                ins.args.append(cmd_part)
    elif shape == "sub" and rest:
        ins.sub = _new_instruction(rest, escape)


def _parse_name_val(rest: str, key: str, escape: str) -> list[str]:
    words = _parse_words(rest, escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _RE_WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise BuildError(f"{key} must have two arguments")
        return [parts[0], parts[1], ""]
    out: list[str] = []
    for word in words:
        if "=" not in word:
            raise BuildError(
                f'Syntax error - can\'t find = in "{word}". Must be of the form: name=value'
            )
        k, _, v = word.partition("=")
        out += [k, v, "="]
    return out


def _heredoc_from_word(word: str) -> tuple[str, bool, bool, int] | None:
    """(name, expand, chomp, fd) when ``word`` is a heredoc marker like ``<<-'EOF'``."""
    m = _RE_HEREDOC.match(word)
    if m is None or not m.group(3):
        return None
    fd = int(m.group(1)) if m.group(1) else 0
    chomp = m.group(2) == "-"
    rest = m.group(3)
    words = ShellLex("\\", skip_unset=True).process_words(rest, {})
    if len(words) != 1:
        return None
    raw = ShellLex("\\", skip_unset=True, raw_quotes=True).process_words(rest, {})
    if len(raw) != len(words):
        raise BuildError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return words[0], quotes == raw_quotes, chomp, fd


def parse_heredoc(word: str) -> Heredoc | None:
    """The heredoc a single word opens (content empty), or None."""
    found = _heredoc_from_word(word)
    if found is None:
        return None
    name, expand, chomp, fd = found
    return Heredoc(name, "", expand, chomp, fd)


def _heredocs_from_line(line: str) -> list[Heredoc]:
    lex = ShellLex("\\", raw_quotes=True, raw_escapes=True, skip_unset=True)
    try:
        words = lex.process_words(line, {})
    except LexError:
        words = []
    docs = []
    for word in words:
        doc = parse_heredoc(word)
        if doc is not None:
            docs.append(doc)
    return docs


# --- validation (the reference's instructions package) ---------------------------------


def _parse_flags(ins: Instruction, allowed: dict[str, str]) -> None:
    options: dict[str, str | bool | list[str]] = {}
    for word in ins.flags:
        if word == "--":
            break
        if not word.startswith("--"):
            raise BuildError(f"arg should start with -- : {word}")
        flag_name, has_value, value = word.partition("=")
        name = flag_name[2:]
        kind = allowed.get(name)
        if kind is None:
            raise BuildError(f"unknown flag: {flag_name}")
        if name in options and kind != "strings":
            raise BuildError(f"duplicate flag specified: {flag_name}")
        if kind == "bool":
            if has_value and not value:
                raise BuildError(f"missing a value on flag: {flag_name}")
            low = value.lower()
            if low not in ("", "true", "false"):
                raise BuildError(f"expecting boolean value for flag {flag_name}, not: {value}")
            options[name] = low != "false"
        else:
            if not has_value:
                raise BuildError(f"missing a value on flag: {flag_name}")
            if kind == "string":
                options[name] = value
            else:
                previous = options.get(name)
                options[name] = [*(previous if isinstance(previous, list) else []), value]
    ins.options = options


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds (HEALTHCHECK intervals)."""
    s = text
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise BuildError(f'time: invalid duration "{text}"')
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _RE_DURATION_PART.match(s, pos)
        if m is None:
            if re.match(r"(\d+(?:\.\d*)?|\.\d+)", s[pos:]):
                raise BuildError(f'time: missing unit in duration "{text}"')
            raise BuildError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _validate(ins: Instruction) -> None:
    cmd = ins.cmd
    if cmd == "HEALTHCHECK" and ins.args and ins.args[0].upper() == "NONE":
        _parse_flags(ins, {})
    else:
        _parse_flags(ins, _FLAGS.get(cmd, {}))
    args = ins.args
    if cmd in ("ENV", "LABEL"):
        if not args:
            raise BuildError(f"{cmd} requires at least one argument")
        if any(not args[j] for j in range(0, len(args), 3)):
            raise BuildError(f"{cmd} names can not be blank")
    elif cmd == "MAINTAINER":
        if len(args) != 1:
            raise BuildError("MAINTAINER requires exactly one argument")
    elif cmd in ("ADD", "COPY"):
        if len(args) < 2:
            raise BuildError(
                f"{cmd} requires at least two arguments, but only one was provided. "
                "Destination could not be determined"
            )
        if parse_heredoc(args[-1]) is not None:
            raise BuildError(f"{cmd} cannot accept a heredoc as a destination")
    elif cmd == "FROM":
        if len(args) == 3 and args[1].lower() == "as":
            if not _RE_STAGE_NAME.match(args[2].lower()):
                raise BuildError(
                    f'invalid name for build stage: "{args[2]}", '
                    "name can't start with a number or contain symbols"
                )
        elif len(args) != 1:
            raise BuildError("FROM requires either one or three arguments")
    elif cmd == "ONBUILD":
        if ins.sub is None:
            raise BuildError("ONBUILD requires at least one argument")
        trigger = ins.sub.cmd
        if trigger == "ONBUILD":
            raise BuildError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if trigger in ("MAINTAINER", "FROM"):
            raise BuildError(f"{trigger} isn't allowed as an ONBUILD trigger")
        _validate(ins.sub)
    elif cmd in ("WORKDIR", "USER", "STOPSIGNAL"):
        if len(args) != 1:
            raise BuildError(f"{cmd} requires exactly one argument")
    elif cmd == "HEALTHCHECK":
        _validate_healthcheck(ins)
    elif cmd == "EXPOSE":
        if not args:
            raise BuildError("EXPOSE requires at least one argument")
    elif cmd == "VOLUME":
        if not args:
            raise BuildError("VOLUME requires at least one argument")
        if any(not a.strip(_WS) for a in args):
            raise BuildError("VOLUME specified can not be an empty string")
    elif cmd == "ARG":
        if not args:
            raise BuildError("ARG requires at least one argument")
        if any("=" in a and not a.partition("=")[0] for a in args):
            raise BuildError("ARG names can not be blank")
    elif cmd == "SHELL":
        if not args:
            raise BuildError("SHELL requires at least one argument")
        if not ins.json:
            raise BuildError("SHELL requires the arguments to be in JSON form")
    mounts = ins.options.get("mount", [])
    if cmd == "RUN" and isinstance(mounts, list):
        for spec in mounts:
            parse_mount(spec)


def _validate_healthcheck(ins: Instruction) -> None:
    if not ins.args:
        raise BuildError("HEALTHCHECK requires at least one argument")
    kind = ins.args[0].upper()
    if kind == "NONE":
        if len(ins.args) != 1:
            raise BuildError("HEALTHCHECK NONE takes no arguments")
        return
    if kind != "CMD":
        raise BuildError(f'Unknown type "{ins.args[0].upper()}" in HEALTHCHECK (try CMD)')
    if len(ins.args) < 2 or (not ins.json and not ins.args[1]):
        raise BuildError("Missing command after HEALTHCHECK CMD")
    for name in ("interval", "timeout", "start-period", "start-interval"):
        value = ins.option(name)
        if value:
            seconds = parse_duration(value)
            if 0 < seconds < 0.001 or seconds < 0:
                raise BuildError(f'Interval "{name}" cannot be less than 1ms')
    retries = ins.option("retries")
    if retries:
        try:
            count = int(retries)
        except ValueError:
            raise BuildError(f'strconv.ParseInt: parsing "{retries}": invalid syntax') from None
        if count < 0:
            raise BuildError(f"--retries cannot be negative ({count})")


def parse_mount(spec: str) -> dict[str, str]:
    """A RUN ``--mount`` value as key/value fields (CSV, as BuildKit reads it).

    ``type`` defaults to ``bind``; ``src``/``dst``/``destination`` are normalised to
    ``source``/``target``; a bare key (``ro``) gets the value ``true``.
    """
    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration):
        raise BuildError(f"invalid mount specification: {spec}") from None
    out: dict[str, str] = {"type": "bind"}
    aliases = {"src": "source", "dst": "target", "destination": "target", "readonly": "ro"}
    for item in fields:
        key, sep, value = item.partition("=")
        key = aliases.get(key.strip().lower(), key.strip().lower())
        if not key:
            continue
        out[key] = value if sep else "true"
    if out["type"] not in ("bind", "cache", "tmpfs", "secret", "ssh"):
        raise BuildError(f"unsupported mount type {out['type']!r}")
    return out
