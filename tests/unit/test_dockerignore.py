""".dockerignore reading, matching and walking, with Docker's pattern rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.build.dockerignore import (
    PatternMatcher,
    clean,
    find_ignore_file,
    keep_build_files,
    load,
    read_patterns,
)
from berth.build.errors import BuildError


def excluded(patterns: list[str], path: str) -> bool:
    return PatternMatcher(patterns).matches(path)


def test_read_comments_blank_trim_clean_and_leading_slash() -> None:
    text = "\ufeff# comment\n\n  *.log  \n/abs/path\n./dir/\n! /keep/./x\na/../b\n #notcomment\n"
    assert read_patterns(text) == ["*.log", "abs/path", "dir", "!keep/x", "b", "#notcomment"]


def test_clean_like_go() -> None:
    assert clean("") == "."
    assert clean("a//b/./c/..") == "a/b"
    assert clean("/../a") == "/a"
    assert clean("../a/..") == ".."


def test_exact_and_star() -> None:
    assert excluded(["foo"], "foo")
    assert not excluded(["foo"], "foobar")
    assert excluded(["*.md"], "README.md")
    assert not excluded(["*.md"], "docs/README.md")  # * does not cross /
    assert excluded(["*/*.md"], "docs/README.md")
    assert excluded(["fo?"], "foo") and not excluded(["fo?"], "fo/")


def test_double_star() -> None:
    assert excluded(["**/*.md"], "README.md")
    assert excluded(["**/*.md"], "a/b/c.md")
    assert excluded(["a/**/z"], "a/z")
    assert excluded(["a/**/z"], "a/b/c/z")
    assert excluded(["a/**"], "a/b/c")
    assert excluded(["**"], "anything/at/all")
    assert excluded(["**/node_modules"], "x/node_modules/pkg/index.js")


def test_directory_pattern_excludes_contents() -> None:
    assert excluded(["build"], "build/out/app.o")
    assert excluded(["build/"], "build/x")  # trailing slash cleaned away
    assert not excluded(["build"], "src/build")


def test_exceptions_last_match_wins() -> None:
    patterns = ["*.md", "!README.md", "README*.md"]
    assert excluded(patterns, "CHANGES.md")
    assert excluded(patterns, "README-secret.md")
    assert not excluded(["*.md", "!README.md"], "README.md")
    assert excluded(["!README.md", "*.md"], "README.md")


def test_exception_inside_excluded_directory() -> None:
    patterns = ["docs", "!docs/keep.md"]
    assert excluded(patterns, "docs/other.md")
    assert not excluded(patterns, "docs/keep.md")


def test_char_class_and_escape() -> None:
    assert excluded(["file[0-9].txt"], "file3.txt")
    assert not excluded(["file[0-9].txt"], "fileA.txt")
    assert excluded(["a\\*b"], "a*b") and not excluded(["a\\*b"], "axb")
    assert excluded(["a.b"], "a.b") and not excluded(["a.b"], "axb")


def test_root_is_never_excluded_and_bad_patterns() -> None:
    assert not excluded(["*", "."], ".")
    with pytest.raises(BuildError, match="illegal exclusion pattern"):
        PatternMatcher(["!"])
    with pytest.raises(BuildError, match="pattern"):
        PatternMatcher(["[abc"])


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)


def test_walk_skips_excluded_directories_and_keeps_exceptions(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        ["a.txt", "node_modules/x/y.js", "docs/keep.md", "docs/drop.md", "src/m.go", "src/m.o"],
    )
    matcher = PatternMatcher(["node_modules", "docs", "!docs/keep.md", "**/*.o"])
    got = [rel for rel, _ in matcher.walk(tmp_path)]
    assert got == ["a.txt", "docs/keep.md", "src", "src/m.go"]


def test_walk_does_not_descend_without_a_literal_exception(tmp_path: Path) -> None:
    # Docker's shortcut: "!**/*.go" cannot re-include below an excluded directory.
    _tree(tmp_path, ["vendor/lib/a.go", "main.go"])
    matcher = PatternMatcher(["vendor", "!**/*.go"])
    assert [rel for rel, _ in matcher.walk(tmp_path)] == ["main.go"]
    assert matcher.can_skip_dir("vendor")
    assert not PatternMatcher(["vendor", "!vendor/lib/a.go"]).can_skip_dir("vendor")
    assert PatternMatcher(["vendor"]).can_skip_dir("vendor")


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("*.a\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "app.Dockerfile").write_text("FROM x\n")
    assert find_ignore_file(tmp_path, "build/app.Dockerfile") == str(tmp_path / ".dockerignore")
    (tmp_path / "build" / "app.Dockerfile.dockerignore").write_text("*.b\n")
    assert find_ignore_file(tmp_path, "build/app.Dockerfile") == str(
        tmp_path / "build" / "app.Dockerfile.dockerignore"
    )
    assert load(tmp_path, "build/app.Dockerfile") == ["*.b"]
    assert load(tmp_path, "Dockerfile") == ["*.a"]
    assert load(tmp_path, "-") == ["*.a"]
    assert find_ignore_file(tmp_path / "build", None) is None


def test_dockerfile_and_dockerignore_are_always_sent() -> None:
    patterns = keep_build_files(["*", "!src"], "Dockerfile")
    assert patterns == ["*", "!src", "!.dockerignore", "!Dockerfile"]
    assert not excluded(patterns, "Dockerfile")
    assert keep_build_files(["*"], "Dockerfile", from_stdin=True) == ["*", "!.dockerignore"]
    assert keep_build_files(["*.log"], "Dockerfile") == ["*.log"]
