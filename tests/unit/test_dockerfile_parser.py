"""Dockerfile parser: one test per rule, expectations from Docker's parser behaviour."""

from __future__ import annotations

import pytest

from berth.build.errors import BuildError
from berth.build.parser import Instruction, parse, parse_duration, parse_mount
from berth.errors import InvalidArgument


def one(text: str) -> Instruction:
    ins = parse(text).instructions
    return ins[-1]


def test_instruction_names_are_case_insensitive() -> None:
    df = parse("from alpine\nRuN echo hi\ncopy a b\n")
    assert [i.cmd for i in df.instructions] == ["FROM", "RUN", "COPY"]


def test_line_numbers_raw_text_and_column() -> None:
    df = parse("FROM a\n\n  RUN echo a \\\n    b\nCMD x")
    run = df.instructions[1]
    assert (run.start_line, run.end_line, run.column) == (3, 4, 3)
    assert run.raw == "  RUN echo a \\\n    b\n"
    assert run.original == "RUN echo a     b"
    assert df.instructions[2].start_line == 5


def test_directives_at_top_case_insensitive() -> None:
    df = parse("# Syntax=docker/dockerfile:1\n#ESCAPE = `\n# check=skip=all\nFROM a\n")
    assert df.directives == {"syntax": "docker/dockerfile:1", "escape": "`", "check": "skip=all"}
    assert df.escape == "`"


def test_directive_after_comment_or_blank_or_instruction_is_a_comment() -> None:
    assert parse("# hello\n# escape=`\nFROM a\n").escape == "\\"
    assert parse("\n# escape=`\nFROM a\n").escape == "\\"
    assert parse("FROM a\n# escape=`\nRUN x\n").escape == "\\"
    # an unknown directive stops directive parsing too
    assert parse("# foo=bar\n# escape=`\nFROM a\n").escape == "\\"


def test_duplicate_or_invalid_directive_is_an_error() -> None:
    with pytest.raises(BuildError, match="only one escape parser directive"):
        parse("# escape=`\n# escape=\\\nFROM a\n")
    with pytest.raises(BuildError, match="invalid escape token"):
        parse("# escape=x\nFROM a\n")


def test_backtick_escape_continuation() -> None:
    df = parse("# escape=`\nFROM image\nENV GOPATH `\n\\go\nRUN dir c:\\ `\n  /s\n")
    assert df.instructions[1].args == ["GOPATH", "\\go", ""]
    assert df.instructions[2].args == ["dir c:\\   /s"]


def test_escape_directive_line_after_comment_is_ignored() -> None:
    df = parse("# Comment\n# escape = `\n\nFROM image\nENV GOPATH \\\n\\go\n")
    assert df.instructions[1].args == ["GOPATH", "\\go", ""]


def test_comments_and_comments_inside_continuations() -> None:
    df = parse(
        "# leading\nFROM a\nRUN echo hello \\\n# this is a comment\n\n"
        "  # indented comment\nthis is more\n"
    )
    assert df.instructions[1].args == ["echo hello this is more"]
    assert df.instructions[0].comments == ["leading"]


def test_line_continuations_keep_spacing() -> None:
    df = parse(
        "FROM a\nRUN echo hello\\\n  world\\\n  goodnight  \\\n  moon\n"
        "RUN echo hello \\\ngoodbye\\\nfrog\n"
    )
    assert df.instructions[1].args == ["echo hello  world  goodnight    moon"]
    assert df.instructions[2].args == ["echo hello goodbyefrog"]


def test_empty_continuation_lines_are_skipped_with_a_warning() -> None:
    df = parse("FROM a\nRUN foo \\\n\nbar \\\n   \nbaz\n")
    assert df.instructions[1].args == ["foo bar baz"]
    assert df.warnings and "Empty continuation line" in df.warnings[0]


def test_escaped_escape_at_end_is_not_a_continuation() -> None:
    df = parse("FROM a\nENV C trailing\\\\backslash\\\\\nENV D next\n")
    assert df.instructions[1].args == ["C", "trailing\\\\backslash\\\\", ""]
    assert df.instructions[2].args == ["D", "next", ""]


def test_lone_escape_lines_join() -> None:
    df = parse("FROM a\nENV E hello\\\n\\\nworld\nENV F hello\\\n \\\nworld\n")
    assert df.instructions[1].args == ["E", "helloworld", ""]
    assert df.instructions[2].args == ["F", "hello world", ""]


def test_continuation_at_eof() -> None:
    assert one("FROM a\nRUN something \\").args == ["something"]


def test_crlf_and_bom() -> None:
    df = parse("\ufeffFROM a\r\nRUN echo \\\r\n  x\r\n")
    assert df.instructions[0].args == ["a"]
    assert df.instructions[1].args == ["echo   x"]


def test_exec_and_shell_forms() -> None:
    run = one('FROM a\nRUN ["echo", "a b"]')
    assert run.json and run.args == ["echo", "a b"]
    shell = one("FROM a\nRUN echo a b")
    assert not shell.json and shell.args == ["echo a b"]
    cmd = one('FROM a\nCMD [ "\\/usr\\\\\\"/bin/znc", "-f" ]')
    assert cmd.args == ['/usr\\"/bin/znc', "-f"]


@pytest.mark.parametrize(
    "text",
    [
        'CMD \'["echo", "JSON in a string"]\'',
        "CMD ['echo','single quotes are invalid JSON']",
        'CMD ["echo", "unterminated bracket"',
        'CMD ["echo", "unterminated string]',
        'CMD ["a"] trailing',
    ],
)
def test_invalid_json_falls_back_to_shell_form(text: str) -> None:
    ins = one("FROM a\n" + text)
    assert not ins.json
    assert ins.args == [text[4:]]


def test_json_with_non_strings_is_an_error() -> None:
    with pytest.raises(BuildError, match="Dockerfile:2:1: when using JSON array syntax"):
        parse('FROM a\nCMD ["echo", 1]\n')


def test_copy_add_volume_json_or_whitespace_lists() -> None:
    assert one("FROM a\nCOPY\t.\t/go/src").args == [".", "/go/src"]
    ins = one('FROM a\nADD [ "test file", "/tmp/test file" ]')
    assert ins.json and ins.args == ["test file", "/tmp/test file"]
    assert one("FROM a\nVOLUME /a  /b").args == ["/a", "/b"]
    assert one('FROM a\nVOLUME ["/a"]').args == ["/a"]


def test_env_and_label_forms() -> None:
    assert one("FROM a\nENV name value with spaces").pairs == [("name", "value with spaces")]
    assert one("FROM a\nENV a=1 b=2").pairs == [("a", "1"), ("b", "2")]
    assert one('FROM a\nENV name="value value1"').pairs == [("name", '"value value1"')]
    assert one("FROM a\nENV name=value\\ value2").pairs == [("name", "value\\ value2")]
    assert one("FROM a\nENV name='a\\'b'").pairs == [("name", "'a\\'b'")]
    assert one('FROM a\nLABEL "k 1"="v 1" k2=v2').pairs == [('"k 1"', '"v 1"'), ("k2", "v2")]
    multi = one('FROM a\nENV name=value \\\n    name2="value2a \\\n   value2b"')
    assert multi.pairs == [("name", "value"), ("name2", '"value2a    value2b"')]


def test_env_errors() -> None:
    with pytest.raises(BuildError, match="ENV must have two arguments"):
        parse("FROM a\nENV onlyname\n")
    with pytest.raises(BuildError, match="can't find = in"):
        parse("FROM a\nENV a=1 b\n")
    with pytest.raises(BuildError, match="ENV names can not be blank"):
        parse("FROM a\nENV =x\n")


def test_arg_forms() -> None:
    assert one("ARG foo bar=baz\nFROM a").args == ["a"]
    arg = parse('FROM a\nARG abc="123 456" def\n').instructions[1]
    assert arg.arg_pairs == [("abc", '"123 456"'), ("def", None)]
    with pytest.raises(BuildError, match="ARG names can not be blank"):
        parse("FROM a\nARG =x\n")


def test_flags_parsed_and_kept() -> None:
    copy = one("FROM a\nCOPY --from=build --chown=1:2 --chmod=0755 --link a /b")
    assert copy.flags == ["--from=build", "--chown=1:2", "--chmod=0755", "--link"]
    assert copy.options == {"from": "build", "chown": "1:2", "chmod": "0755", "link": True}
    assert copy.args == ["a", "/b"]
    add = one("FROM a\nADD --checksum=sha256:abc --keep-git-dir=false --link=true u /d")
    assert add.options == {"checksum": "sha256:abc", "keep-git-dir": False, "link": True}
    frm = parse("FROM --platform=linux/arm64 a AS b\n").instructions[0]
    assert frm.options == {"platform": "linux/arm64"}
    run = one("FROM a\nRUN --mount=type=cache,target=/c --mount=type=bind,from=x --network=none ls")
    assert run.options == {
        "mount": ["type=cache,target=/c", "type=bind,from=x"],
        "network": "none",
    }
    assert run.args == ["ls"]


def test_flag_quotes_and_double_dash() -> None:
    copy = one('FROM a\nCOPY --chown="a b" -- --weird /d')
    assert copy.options == {"chown": "a b"}
    assert copy.args == ["--weird", "/d"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY --user=me a b", "unknown flag: --user"),
        ("COPY --from a b", "missing a value on flag: --from"),
        ("COPY --link=maybe a b", "expecting boolean value"),
        ("COPY --link= a b", "missing a value"),
        ("COPY --from=a --from=b a b", "duplicate flag specified: --from"),
        ("CMD --doit [ 'a' ]", "unknown flag: --doit"),
        ("RUN --mount=type=weird x", "unsupported mount type"),
    ],
)
def test_bad_flags(line: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        parse("FROM a\n" + line + "\n")


def test_heredoc_run_and_line_numbers() -> None:
    df = parse("FROM a\nRUN <<EOF\necho hi\necho there\nEOF\nCMD x\n")
    run = df.instructions[1]
    assert run.args == ["<<EOF"]
    assert [(h.name, h.content, h.expand) for h in run.heredocs] == [
        ("EOF", "echo hi\necho there\n", True)
    ]
    assert (run.start_line, run.end_line) == (2, 5)
    assert df.instructions[2].start_line == 6


def test_several_heredocs_in_one_instruction() -> None:
    copy = one("FROM a\nCOPY <<X <<Y /dest\nY\nX\nX\nY\n")
    assert [(h.name, h.content) for h in copy.heredocs] == [("X", "Y\n"), ("Y", "X\n")]


def test_heredoc_chomp_strips_leading_tabs() -> None:
    run = one("FROM a\nRUN <<-EOF\n\tbaz\n\t\tquux\n\tEOF\n")
    doc = run.heredocs[0]
    assert doc.chomp and doc.content == "\tbaz\n\t\tquux\n"
    assert doc.data == "baz\nquux\n"


@pytest.mark.parametrize(
    ("marker", "name", "expand"),
    [
        ("<<EOF", "EOF", True),
        ("<<'EOF'", "EOF", False),
        ('<<"EOF"', "EOF", False),
        ("<<eo'f'", "eof", False),
        ("<<eo\\'f", "eo'f", True),
        ("<<'one two'", "one two", False),
        ("<<$EOF", "$EOF", True),
        ("<<  EOF", "EOF", True),
        ("3<<FD", "FD", True),
    ],
)
def test_heredoc_delimiters_and_quoting(marker: str, name: str, expand: bool) -> None:
    run = one(f"FROM a\nRUN {marker}\nbody $X\n{name}\n")
    assert [(h.name, h.content, h.expand) for h in run.heredocs] == [(name, "body $X\n", expand)]
    if marker.startswith("3"):
        assert run.heredocs[0].fd == 3


def test_heredoc_with_command_after_and_mount_flag() -> None:
    run = one("FROM a\nRUN --mount=type=cache,target=/c <<EOF python3\nprint(1)\nEOF\n")
    assert run.args == ["<<EOF python3"]
    assert run.heredocs[0].content == "print(1)\n"


def test_no_heredoc_in_json_form_quotes_or_other_instructions() -> None:
    assert one('FROM a\nRUN ["<<EOF"]').heredocs == []
    assert one('FROM a\nRUN "<<NOHEREDOC"').heredocs == []
    with pytest.raises(BuildError, match="Dockerfile:3:1: unknown instruction: INVALID"):
        parse("FROM a\nUSER <<INVALID\nINVALID\n")


def test_heredoc_inside_onbuild() -> None:
    onbuild = one("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert onbuild.sub is not None and onbuild.sub.cmd == "RUN"
    assert onbuild.heredocs[0].content == "echo hi\n"
    assert onbuild.expression == "RUN <<EOF\necho hi\nEOF"


def test_unterminated_heredoc() -> None:
    with pytest.raises(BuildError, match="Dockerfile:2:1: unterminated heredoc"):
        parse("FROM a\nRUN <<EOF\necho\n")


def test_heredoc_as_copy_destination_is_an_error() -> None:
    with pytest.raises(BuildError, match="cannot accept a heredoc as a destination"):
        parse("FROM a\nCOPY a <<EOF\nx\nEOF\n")


def test_unknown_instruction_names_line_and_column() -> None:
    with pytest.raises(BuildError) as err:
        parse("FROM a\n\n   FOO bar\n")
    assert str(err.value) == "Dockerfile:3:4: unknown instruction: FOO"
    assert err.value.line == 3 and err.value.column == 4
    assert isinstance(err.value, InvalidArgument)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file with no instructions"),
        ("# only a comment\n", "file with no instructions"),
        ("FROM\n", "FROM requires either one or three arguments"),
        ("FROM a b\n", "FROM requires either one or three arguments"),
        ("FROM a AS 1st\n", "invalid name for build stage"),
        ("FROM a\nCOPY onlyone\n", "COPY requires at least two arguments"),
        ("FROM a\nWORKDIR\n", "WORKDIR requires exactly one argument"),
        ("FROM a\nEXPOSE\n", "EXPOSE requires at least one argument"),
        ("FROM a\nSHELL /bin/sh -c\n", "SHELL requires the arguments to be in JSON form"),
        ("FROM a\nSHELL []\n", "SHELL requires at least one argument"),
        ("FROM a\nONBUILD ONBUILD RUN x\n", "Chaining ONBUILD"),
        ("FROM a\nONBUILD FROM b\n", "FROM isn't allowed as an ONBUILD trigger"),
        ("FROM a\nONBUILD\n", "ONBUILD requires at least one argument"),
        ("FROM a\nHEALTHCHECK NONE x\n", "HEALTHCHECK NONE takes no arguments"),
        ("FROM a\nHEALTHCHECK CONNECT TCP 7000\n", 'Unknown type "CONNECT"'),
        ("FROM a\nHEALTHCHECK CMD\n", "Missing command after HEALTHCHECK CMD"),
        ("FROM a\nHEALTHCHECK --interval=5 CMD x\n", "missing unit"),
        ("FROM a\nHEALTHCHECK --retries=-1 CMD x\n", "cannot be negative"),
        ("FROM a\nMAINTAINER\n", "MAINTAINER requires exactly one argument"),
    ],
)
def test_malformed_lines(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        parse(text)


def test_healthcheck_forms() -> None:
    hc = one("FROM a\nHEALTHCHECK --interval=5s --timeout=3s --retries=3 \\\n  CMD /check --quiet")
    assert hc.args == ["CMD", "/check --quiet"] and not hc.json
    assert hc.options == {"interval": "5s", "timeout": "3s", "retries": "3"}
    assert one('FROM a\nHEALTHCHECK CMD ["foo"]').args == ["CMD", "foo"]
    assert one("FROM a\nHEALTHCHECK NONE").args == ["NONE"]


def test_onbuild_keeps_expression() -> None:
    onbuild = one("FROM a\nonbuild   ADD --chown=1 . /app")
    assert onbuild.sub is not None and onbuild.sub.options == {"chown": "1"}
    assert onbuild.expression == "ADD --chown=1 . /app"


def test_string_instructions_keep_the_whole_rest() -> None:
    assert one("FROM a\nWORKDIR /a b").args == ["/a b"]
    assert one("FROM a\nMAINTAINER Me <me@x>").args == ["Me <me@x>"]


def test_parse_duration_and_mount() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("1.5h") == 5400
    assert parse_mount("type=cache,target=/c,ro") == {"type": "cache", "target": "/c", "ro": "true"}
    assert parse_mount("src=a,dst=/b")["target"] == "/b"


def test_filename_in_errors() -> None:
    with pytest.raises(BuildError, match=r"^app\.Dockerfile:1:1: unknown instruction"):
        parse("BAD x\n", filename="app.Dockerfile")
