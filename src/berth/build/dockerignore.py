""".dockerignore: reading the file, matching paths, and walking a context with it.

The rules are Docker's (moby/patternmatcher and its ignorefile reader), written anew:

- lines starting with ``#`` are comments; blank lines are skipped; each pattern is
  trimmed, cleaned like Go's ``filepath.Clean`` (``./a/`` -> ``a``, ``a/../b`` -> ``b``)
  and a leading ``/`` is dropped, so ``/a`` and ``a`` are the same;
- ``*`` and ``?`` never match ``/``; ``**`` matches any number of directories (even
  none); ``[...]`` is a character class; ``\\`` escapes the next character;
- a pattern matching a directory excludes everything below it;
- ``!pattern`` re-includes; the last matching pattern decides;
- the context root itself is never excluded.

Walking skips an excluded directory outright unless an exception pattern names a path
under it literally (``!dir/keep``): exactly the shortcut Docker's tar writer takes, so
``!**/*.go`` does not re-include files below an excluded directory, as in Docker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from berth.build.errors import BuildError

# the berth CLI imports this module for every build with an ignore file: no dataclasses
# or pathlib (~10 ms of imports together)

DEFAULT_NAME = ".dockerignore"
_ESCAPED = frozenset(".+()|{}$")


def clean(path: str) -> str:
    """Go's ``filepath.Clean`` for slash paths."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    joined = "/".join(out)
    if rooted:
        return "/" + joined
    return joined or "."


def read_patterns(text: str | bytes) -> list[str]:
    """The patterns of an ignore file, normalised as Docker's reader does."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    patterns: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


class Pattern:
    """One compiled pattern."""

    __slots__ = ("depth", "exclusion", "kind", "regex", "text")

    def __init__(
        self, text: str, exclusion: bool, kind: str, regex: re.Pattern[str] | None, depth: int
    ) -> None:
        self.text = text  # cleaned, without the leading "!"
        self.exclusion = exclusion
        self.kind = kind  # "exact", "prefix", "suffix" or "regexp"
        self.regex = regex
        self.depth = depth  # number of path elements in the pattern

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        assert self.regex is not None
        return self.regex.match(path) is not None


def _compile(text: str, exclusion: bool) -> Pattern:
    regex = ["^"]
    kind = "exact"
    i = 0
    n = len(text)
    first = True
    while i < n:
        ch = text[i]
        i += 1
        if ch == "*":
            if i < n and text[i] == "*":
                i += 1
                if i < n and text[i] == "/":
                    i += 1
                if i >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex.append(".*")
                        kind = "regexp"
                else:
                    regex.append("(.*/)?")
                    kind = "regexp"
                if first:
                    kind = "suffix"
            else:
                regex.append("[^/]*")
                kind = "regexp"
        elif ch == "?":
            regex.append("[^/]")
            kind = "regexp"
        elif ch in _ESCAPED:
            regex.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                regex.append("\\" + text[i])
                i += 1
                kind = "regexp"
            else:
                regex.append("\\\\")
        elif ch in "[]":
            regex.append(ch)
            kind = "regexp"
        else:
            regex.append(ch)
        first = False
    compiled = None
    if kind == "regexp":
        try:
            compiled = re.compile("".join(regex) + r"\Z")
        except re.error as exc:
            raise BuildError(f"invalid .dockerignore pattern {text!r}: {exc}") from None
    return Pattern(text, exclusion, kind, compiled, len(text.split("/")))


def _syntax_check(text: str) -> None:
    """Reject what Go's filepath.Match calls a bad pattern: unclosed classes, a
    trailing escape inside a class."""
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            depth = 1
        elif ch == "]" and depth:
            depth = 0
        i += 1
    if depth:
        raise BuildError(f"invalid .dockerignore pattern {text!r}: syntax error in pattern")


class PatternMatcher:
    """Decides whether a context path is excluded."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[Pattern] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            text = clean(text)
            exclusion = text.startswith("!")
            if exclusion:
                if len(text) == 1:
                    raise BuildError('illegal exclusion pattern: "!"')
                text = text[1:]
            _syntax_check(text)
            self.patterns.append(_compile(text, exclusion))
        self.exclusions = any(p.exclusion for p in self.patterns)

    def matches(self, path: str) -> bool:
        """True when ``path`` (slash-separated, relative to the context) is excluded.

        A pattern that matches any parent directory matches the path too.
        """
        path = clean(path)
        if path == ".":
            return False
        parent = path.rpartition("/")[0]
        parents = parent.split("/") if parent else []
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(path)
            if not hit:
                for i in range(len(parents)):
                    if pattern.match("/".join(parents[: i + 1])):
                        hit = True
                        break
            if hit:
                matched = not pattern.exclusion
        return matched

    def can_skip_dir(self, path: str) -> bool:
        """For an excluded directory: True when no exception could re-include anything
        below it (Docker's rule: only an exception pattern that starts with the
        directory's path keeps the walk going)."""
        if not self.exclusions:
            return True
        prefix = clean(path) + "/"
        return not any(p.exclusion and (p.text + "/").startswith(prefix) for p in self.patterns)

    def walk(self, root: str | os.PathLike[str]) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """Included entries under ``root`` (relative slash path, entry), sorted by name,
        parents before children, symlinks not followed. An excluded directory is not
        yielded; it is descended only when an exception may match inside it."""
        yield from self._walk(os.fspath(root), "")

    def _walk(self, top: str, rel: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        try:
            with os.scandir(top) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if self.matches(path):
                if is_dir and not self.can_skip_dir(path):
                    yield from self._walk(entry.path, path)
                continue
            yield path, entry
            if is_dir:
                yield from self._walk(entry.path, path)


def find_ignore_file(context: str | os.PathLike[str], dockerfile: str | None = None) -> str | None:
    """The ignore file for a build: ``<Dockerfile>.dockerignore`` next to the Dockerfile
    when it exists (it wins), else ``.dockerignore`` at the context root, else None.

    ``dockerfile`` is the ``-f`` value: relative to the context, or absolute.
    """
    ctx = os.fspath(context)
    if dockerfile and dockerfile != "-":
        specific = os.path.join(ctx, dockerfile) + DEFAULT_NAME  # an absolute one wins
        if os.path.isfile(specific):
            return specific
    default = os.path.join(ctx, DEFAULT_NAME)
    return default if os.path.isfile(default) else None


def load(context: str | os.PathLike[str], dockerfile: str | None = None) -> list[str]:
    """The patterns that apply to a build (empty when there is no ignore file)."""
    found = find_ignore_file(context, dockerfile)
    if found is None:
        return []
    with open(found, "rb") as f:
        return read_patterns(f.read())


def keep_build_files(patterns: list[str], dockerfile: str, from_stdin: bool = False) -> list[str]:
    """Patterns with the Dockerfile and .dockerignore re-included when excluded.

    Docker's CLI always sends them (the daemon needs to read them) and the daemon then
    leaves them out of what COPY sees; this is the CLI half of that rule.
    """
    matcher = PatternMatcher(patterns)
    out = list(patterns)
    if matcher.matches(DEFAULT_NAME):
        out.append("!" + DEFAULT_NAME)
    name = dockerfile.replace(os.sep, "/")
    if not from_stdin and matcher.matches(name):
        out.append("!" + name)
    return out
