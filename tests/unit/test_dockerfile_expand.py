"""Word expansion and ARG/ENV scoping, with expectations from Docker's lexer behaviour."""

from __future__ import annotations

import pytest

from berth.build.errors import BuildError
from berth.build.expand import (
    PROXY_ARGS,
    StageScope,
    expand_from,
    platform_args,
    resolve_meta_args,
)
from berth.build.parser import parse
from berth.build.shell import LexError, ShellLex

ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}

# (input, expected) for single-word processing; None means "is an error".
WORD_CASES = [
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he'llo", None),
    ("he\\'llo", "he'llo"),
    ("he\\\\'llo", None),
    ("abc\\tdef", "abctdef"),
    ('"abc\\tdef"', "abc\\tdef"),
    ('"abc\\\\tdef"', "abc\\tdef"),
    ("'abc\\tdef'", "abc\\tdef"),
    ("hello\\", "hello"),
    ("hello\\\\", "hello\\"),
    ('"hello', None),
    ('"hello\\"', None),
    ("'hello\\'", "hello\\"),
    ("\"''\"", "''"),
    ("$.", "$."),
    ("he$1x", "hex"),
    ("he$pwd.", "he."),
    ("he$PWD", "he/home"),
    ("he\\$PWD", "he$PWD"),
    ("he\\\\$PWD", "he\\/home"),
    ('"he\\$PWD"', "he$PWD"),
    ("\\${}", "${}"),
    ("${}", None),
    ("he${}xx", None),
    ("he${hi}xx", "hexx"),
    ("he${.}", None),
    ("he${XXX:-000}xx", "he000xx"),
    ("he${PWD:-000}xx", "he/homexx"),
    ("he${XXX:-$PWD}xx", "he/homexx"),
    ("he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
    ("he${XXX:YYY}", None),
    ("he${XXX?}", None),
    ("he${PWD?}", "he/home"),
    ("he${NULL?}", "he"),
    ("he${NULL:?}", None),
    ("he${XXX:+${PWD}}xx", "hexx"),
    ("he${PWD:+${SHELL}}xx", "hebashxx"),
    ("'he${XX}'", "he${XX}"),
    ("\"he'$PWD'\"", "he'/home'"),
    ("'\\$PWD'", "\\$PWD"),
    ("he${PWD", None),
    ("he${PWD:=000}xx", None),
    ("he${PWD:+${PWD}:}xx", "he/home:xx"),
    ("he${XXX:-\\$PWD:}xx", "he$PWD:xx"),
    ("he${XXX:-\\${PWD}z}xx", "he${PWDz}xx"),
    ("안녕$KOREAN", "안녕한국어"),
    ("${aaa}}", "}"),
    ("${aaa:-bbb}}", "bbb}"),
    ("${aaa:-bbb {foo}", "bbb {foo"),
    ("${aaa:-bbb ${foo}", None),
    ("${:-bbb}", None),
    ("${999:-bbb}aaa", "bbbaaa"),
    ("$999aaa", "aaa"),
    ("$@@@", "@@"),
    ("${#:-bbb}", "bbb"),
    ("$$", ""),
]


@pytest.mark.parametrize(("word", "expected"), WORD_CASES)
def test_process_word_table(word: str, expected: str | None) -> None:
    lex = ShellLex("\\")
    if expected is None:
        with pytest.raises(LexError):
            lex.process_word(word, ENV)
    else:
        assert lex.process_word(word, ENV) == expected


WORDS_ENV = {"hi": "hi", "space": "abc  def", "leading": "  ab c", "trailing": "ab c   "}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("hello${hi}bye", ["hellohibye"]),
        ("hello${space}bye", ["helloabc", "defbye"]),
        ('hello"${space}"bye', ["helloabc  defbye"]),
        ('hello "${space}"bye', ["hello", "abc  defbye"]),
        ("hello${leading}def", ["hello", "ab", "cdef"]),
        ('hello"${leading}" def', ["hello  ab c", "def"]),
        ("hello${trailing}d", ["helloab", "c", "d"]),
        ('hel"lo${trailing}"', ["helloab c   "]),
        ("hello there     ", ["hello", "there"]),
        ("hello\\ there", ["hello there"]),
        ('hello\\" there', ['hello"', "there"]),
        ("hello'$there'", ["hello$there"]),
    ],
)
def test_process_words_splits_only_unquoted_expansions(word: str, expected: list[str]) -> None:
    assert ShellLex("\\").process_words(word, WORDS_ENV) == expected


def test_prefix_and_suffix_removal() -> None:
    env = {"F": "archive.tar.gz", "P": "/usr/local/bin"}
    lex = ShellLex()
    assert lex.process_word("${F%.*}", env) == "archive.tar"
    assert lex.process_word("${F%%.*}", env) == "archive"
    assert lex.process_word("${F#*.}", env) == "tar.gz"
    assert lex.process_word("${F##*.}", env) == "gz"
    assert lex.process_word("${P#/usr}", env) == "/local/bin"
    assert lex.process_word("${F%nomatch}", env) == "archive.tar.gz"
    assert lex.process_word("${F#\\*}", {"F": "*x"}) == "x"
    with pytest.raises(LexError):
        lex.process_word("${F:#x}", env)  # ':' with # or % is unsupported


def test_pattern_substitution() -> None:
    env = {"V": "a-b-c"}
    lex = ShellLex()
    assert lex.process_word("${V/-/+}", env) == "a+b-c"
    assert lex.process_word("${V//-/+}", env) == "a+b+c"
    assert lex.process_word("${V/?/x}", env) == "x-b-c"
    assert lex.process_word("${V/z/x}", env) == "a-b-c"
    with pytest.raises(LexError):
        lex.process_word("${V/-}", env)


def test_unset_and_empty_modifiers_differ_with_colon() -> None:
    env = {"E": ""}
    lex = ShellLex()
    assert lex.process_word("${E-d}", env) == ""
    assert lex.process_word("${E:-d}", env) == "d"
    assert lex.process_word("${E+a}", env) == "a"
    assert lex.process_word("${E:+a}", env) == ""
    assert lex.process_word("${U-d}", env) == "d"
    with pytest.raises(LexError, match="custom message"):
        lex.process_word("${U:?custom message}", env)


def test_backtick_escape_token() -> None:
    lex = ShellLex("`")
    assert lex.process_word("a`$B", {"B": "x"}) == "a$B"
    assert lex.process_word("C:\\dir\\$B", {"B": "x"}) == "C:\\dir\\x"


def test_matched_and_unmatched_names() -> None:
    result = ShellLex().process("$A ${B:-x} $C", {"A": "1", "C": "3"})
    assert result.value == "1 x 3"
    assert result.matched == {"A", "C"}
    assert result.unmatched == {"B"}


def test_skip_unset_keeps_references() -> None:
    lex = ShellLex(skip_unset=True)
    assert lex.process_word("$A ${B} ${C:-d}", {}) == "$A ${B} ${C:-d}"


def _stage(text: str, **kw: object) -> tuple[StageScope, list]:
    df = parse(text)
    scope = StageScope(**kw)  # type: ignore[arg-type]
    steps = [scope.dispatch(i) for i in df.instructions if i.cmd != "FROM"]
    return scope, steps


def test_env_both_forms_and_quotes() -> None:
    scope, steps = _stage(
        'FROM x\nENV A=1 B="two words" C=a\\ b\nENV D old style $A\nENV E=${A}x\n'
    )
    assert scope.env == {"A": "1", "B": "two words", "C": "a b", "D": "old style 1", "E": "1x"}
    assert steps[0].text == "ENV A=1 B=two words C=a b"


def test_env_pairs_in_one_instruction_see_the_previous_state() -> None:
    scope, _ = _stage("FROM x\nENV A=old\nENV A=new B=$A\n")
    assert scope.env["B"] == "old"


def test_label_keys_and_values_expand() -> None:
    _, steps = _stage('FROM x\nARG V=1.0\nLABEL "com.x.version"=$V other="a b"\n')
    assert steps[1].pairs == [("com.x.version", "1.0"), ("other", "a b")]
    assert steps[1].used_args == {"V": "1.0"}


def test_copy_sources_dest_and_flags_expand_but_not_from() -> None:
    _, steps = _stage(
        "FROM x\nARG U=1000 D=/app\nCOPY --from=builder --chown=$U:$U --chmod=644 src/$U $D/\n"
    )
    copy = steps[1]
    assert copy.sources == ["src/1000"]
    assert copy.dest == "/app/"
    assert copy.options["chown"] == "1000:1000"
    assert copy.options["from"] == "builder"
    assert copy.used_args == {"D": "/app", "U": "1000"}
    assert copy.text == "COPY --from=builder --chown=1000:1000 --chmod=644 src/1000 /app/"


def test_copy_json_form_expands_each_element() -> None:
    _, steps = _stage('FROM x\nENV F="a b"\nCOPY ["$F", "/dst/$F"]\n')
    assert steps[1].sources == ["a b"]
    assert steps[1].dest == "/dst/a b"


def test_copy_shell_form_splits_on_whitespace_before_expansion() -> None:
    df = parse('FROM x\nCOPY "a b" /d\n')
    with pytest.raises(BuildError, match="Dockerfile:2"):
        StageScope().expand(df.instructions[1])


def test_expose_splits_words_after_expansion() -> None:
    _, steps = _stage('FROM x\nENV P="80 443/udp"\nEXPOSE $P "8080"\n')
    assert steps[1].args == ["80", "443/udp", "8080"]


def test_workdir_user_volume_stopsignal_expand() -> None:
    _, steps = _stage(
        "FROM x\nENV H=/h U=me S=TERM\nWORKDIR $H/w\nUSER ${U}:${U}\n"
        "VOLUME $H /v\nSTOPSIGNAL SIG$S\n"
    )
    assert [s.args for s in steps[1:]] == [["/h/w"], ["me:me"], ["/h", "/v"], ["SIGTERM"]]


def test_run_cmd_entrypoint_shell_healthcheck_are_not_expanded() -> None:
    _, steps = _stage(
        'FROM x\nENV A=1\nRUN echo $A\nCMD echo $A\nENTRYPOINT ["$A"]\n'
        'SHELL ["/bin/$A"]\nHEALTHCHECK CMD test $A\nMAINTAINER $A\nONBUILD RUN $A\n'
    )
    assert [s.args for s in steps[1:]] == [
        ["echo $A"],
        ["echo $A"],
        ["$A"],
        ["/bin/$A"],
        ["CMD", "test $A"],
        ["$A"],
        [],
    ]


def test_run_mount_values_expand() -> None:
    _, steps = _stage("FROM x\nARG C=/root/.cache\nRUN --mount=type=cache,target=$C true\n")
    assert steps[1].options["mount"] == ["type=cache,target=/root/.cache"]


def test_heredoc_copy_content_expands_unless_quoted() -> None:
    _, steps = _stage("FROM x\nARG N=world\nCOPY <<A <<'B' /d/\nhello $N \"q\"\nA\nraw $N\nB\n")
    docs = steps[1].heredocs
    assert [(d.name, d.data) for d in docs] == [("A", 'hello world "q"\n'), ("B", "raw $N\n")]
    assert steps[1].sources == []


def test_env_wins_over_arg() -> None:
    scope, steps = _stage("FROM x\nENV V=env\nARG V=arg\nWORKDIR /$V\n", build_args={"V": "cli"})
    assert steps[2].args == ["/env"]
    assert steps[2].used_args == {}
    assert scope.run_args() == {}


def test_build_arg_overrides_default_and_needs_declaration() -> None:
    _, steps = _stage("FROM x\nWORKDIR /$A\nARG A=default\nWORKDIR /$A\n", build_args={"A": "cli"})
    assert steps[0].args == ["/"]  # not declared yet: unset
    assert steps[2].args == ["/cli"]
    assert steps[2].used_args == {"A": "cli"}


def test_arg_without_default_is_unset_until_given() -> None:
    _, steps = _stage("FROM x\nARG A\nWORKDIR /w${A:-none}\n")
    assert steps[1].args == ["/wnone"]


def test_global_args_only_in_from_unless_redeclared() -> None:
    df = parse("ARG IMG=alpine\nARG TAG=3\nFROM $IMG:$TAG\nWORKDIR /$IMG\nARG IMG\nWORKDIR /$IMG\n")
    meta = resolve_meta_args(df.instructions[:2], {})
    assert meta == {"IMG": "alpine", "TAG": "3"}
    base, _, used = expand_from(df.instructions[2], meta)
    assert base == "alpine:3" and used == {"IMG", "TAG"}
    scope = StageScope(meta=meta)
    steps = [scope.dispatch(i) for i in df.instructions[3:]]
    assert steps[0].args == ["/"]
    assert steps[2].args == ["/alpine"]


def test_global_arg_defaults_see_earlier_globals_and_build_args() -> None:
    df = parse("ARG A=1\nARG B=${A}2\nFROM x\n")
    assert resolve_meta_args(df.instructions[:2], {"A": "9"}) == {"A": "9", "B": "92"}


def test_from_blank_base_is_an_error() -> None:
    df = parse("ARG B\nFROM ${B}\n")
    with pytest.raises(BuildError, match="Dockerfile:2:1: base name"):
        expand_from(df.instructions[1], resolve_meta_args(df.instructions[:1], {}))


def test_from_platform_expands_with_platform_args() -> None:
    df = parse("FROM --platform=$BUILDPLATFORM alpine\n")
    plat = platform_args("linux/arm64", "linux/amd64")
    _, platform, _ = expand_from(df.instructions[0], {}, platform=plat)
    assert platform == "linux/amd64"


def test_platform_args_need_declaring_in_a_stage() -> None:
    plat = platform_args("linux/arm/v7", "linux/amd64")
    assert plat["TARGETARCH"] == "arm" and plat["TARGETVARIANT"] == "v7"
    assert plat["BUILDOS"] == "linux" and plat["TARGETPLATFORM"] == "linux/arm/v7"
    _, steps = _stage(
        "FROM x\nWORKDIR /$TARGETARCH\nARG TARGETARCH\nWORKDIR /$TARGETARCH\n", platform=plat
    )
    assert steps[0].args == ["/"]
    assert steps[2].args == ["/arm"]


def test_proxy_args_are_predefined_and_out_of_the_cache_key() -> None:
    assert "HTTP_PROXY" in PROXY_ARGS and "no_proxy" in PROXY_ARGS
    scope, steps = _stage("FROM x\nARG V=1\nRUN true\n", build_args={"HTTP_PROXY": "http://p:3128"})
    assert scope.run_args() == {"HTTP_PROXY": "http://p:3128", "V": "1"}
    assert steps[1].used_args == {"V": "1"}
    _, steps2 = _stage(
        "FROM x\nARG HTTP_PROXY\nRUN true\n", build_args={"HTTP_PROXY": "http://p:3128"}
    )
    assert steps2[1].used_args == {"HTTP_PROXY": "http://p:3128"}


def test_used_args_for_cache_key() -> None:
    _, steps = _stage(
        "FROM x\nARG A=1 B=2\nENV E=$A\nRUN make\nCOPY f /$B/\nCMD x\n", build_args={"B": "5"}
    )
    env, run, copy, cmd = steps[1:]
    assert env.used_args == {"A": "1"}
    assert run.used_args == {"A": "1", "B": "5"}  # a RUN sees every declared ARG
    assert copy.used_args == {"B": "5"}
    assert cmd.used_args == {}


def test_arg_defaults_expand_against_scope() -> None:
    scope, _ = _stage("FROM x\nENV P=/opt\nARG D=$P/data\n")
    assert scope.args == {"D": "/opt/data"}


def test_expansion_error_names_the_line() -> None:
    df = parse("FROM x\n\nWORKDIR ${A\n")
    with pytest.raises(BuildError, match=r"Dockerfile:3:1: .*missing '}'"):
        StageScope().expand(df.instructions[1])


def test_escape_directive_applies_to_expansion() -> None:
    df = parse("# escape=`\nFROM x\nENV P=C:\\dir`$notvar\n")
    scope = StageScope(escape=df.escape)
    scope.dispatch(df.instructions[1])
    assert scope.env == {"P": "C:\\dir$notvar"}
