"""Stages, the ones a target needs, and which can build in parallel."""

from __future__ import annotations

import pytest

from berth.build.errors import BuildError
from berth.build.expand import platform_args
from berth.build.parser import parse
from berth.build.stages import plan, split_stages

MULTI = """\
ARG BASE=alpine
FROM $BASE AS deps
RUN fetch
FROM golang AS Build
COPY --from=deps /d /d
RUN build
FROM alpine AS docs
RUN mkdocs
FROM build AS test
RUN test
FROM scratch
COPY --from=build /app /app
COPY --from=2 /site /site
"""


def test_split_stages_names_indexes_and_meta_args() -> None:
    meta, stages = split_stages(parse(MULTI))
    assert [m.cmd for m in meta] == ["ARG"]
    assert [(s.index, s.name) for s in stages] == [
        (0, "deps"),
        (1, "build"),
        (2, "docs"),
        (3, "test"),
        (4, ""),
    ]
    assert [i.cmd for i in stages[1].instructions] == ["COPY", "RUN"]


def test_dependencies_from_base_copy_from_name_and_index() -> None:
    p = plan(parse(MULTI))
    assert p.stages[0].base == "alpine"
    assert p.stages[1].deps == {0}
    assert p.stages[3].base_stage == 1 and p.stages[3].deps == {1}
    assert p.stages[4].deps == {1, 2}
    assert p.stages[4].scratch


def test_default_target_needs_only_what_it_reaches() -> None:
    p = plan(parse(MULTI))
    assert p.target == 4
    assert p.needed == [0, 1, 2, 4]  # "test" is not needed
    assert p.waves == [[0, 2], [1], [4]]


def test_named_target_case_insensitive() -> None:
    p = plan(parse(MULTI), target="TEST")
    assert p.target == 3 and p.needed == [0, 1, 3]
    assert p.waves == [[0], [1], [3]]
    with pytest.raises(BuildError, match="target stage 'nope' could not be found"):
        plan(parse(MULTI), target="nope")


def test_from_expands_global_args_to_find_a_stage() -> None:
    df = parse("ARG SRC=one\nFROM alpine AS one\nFROM alpine AS two\nFROM ${SRC}\n")
    assert plan(df).stages[2].deps == {0}
    assert plan(df, build_args={"SRC": "two"}).stages[2].deps == {1}


def test_run_mount_from_is_a_dependency() -> None:
    df = parse(
        "FROM alpine AS cache\nFROM alpine\n"
        "RUN --mount=type=bind,from=cache,target=/c --mount=type=bind,from=busybox ls\n"
    )
    p = plan(df)
    assert p.stages[1].deps == {0}
    assert p.stages[1].images == ["busybox"]


def test_copy_from_image_is_not_a_stage() -> None:
    p = plan(parse("FROM alpine\nCOPY --from=nginx:latest /etc/nginx /n\n"))
    assert p.stages[0].deps == set() and p.stages[0].images == ["nginx:latest"]


def test_independent_stages_share_a_wave() -> None:
    df = parse(
        "FROM a AS x\nFROM b AS y\nFROM c AS z\nFROM d\nCOPY --from=x / /\nCOPY --from=y / /\n"
    )
    p = plan(df)
    assert p.needed == [0, 1, 3]
    assert p.waves == [[0, 1], [3]]


def test_forward_reference_by_name_is_allowed() -> None:
    df = parse("FROM alpine\nCOPY --from=later /x /x\nFROM alpine AS later\n")
    p = plan(df, target=None)
    assert p.target == 1 and p.needed == [1]
    p0 = plan(
        parse("FROM alpine AS first\nCOPY --from=later /x /x\nFROM alpine AS later\n"), "first"
    )
    assert p0.needed == [0, 1] and p0.waves == [[1], [0]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM a AS x\nCOPY --from=x / /\n", "refers to the current build stage"),
        ("FROM a\nCOPY --from=0 / /\n", "refers to the current build stage"),
        ("FROM a\nCOPY --from=1 / /\nFROM b\n", "index out of bounds"),
        ("FROM a AS x\nFROM b AS X\n", "duplicate stage name"),
        ("FROM x AS x\n", "cannot use itself"),
        ("FROM b AS a\nFROM a AS b\n", "circular dependency"),
        ("RUN x\nFROM a\n", "no build stage in current context"),
        ("ARG A=1\n", "no build stage"),
    ],
)
def test_stage_errors(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        plan(parse(text))


def test_error_location_for_stage_errors() -> None:
    with pytest.raises(BuildError, match=r"^Dockerfile:3:1: "):
        plan(parse("FROM a AS x\n\nCOPY --from=x / /\n"))


def test_platform_and_lookup() -> None:
    df = parse("FROM --platform=$BUILDPLATFORM golang AS b\nFROM alpine\nCOPY --from=b / /\n")
    p = plan(df, platform=platform_args("linux/arm64", "linux/amd64"))
    assert p.stages[0].platform == "linux/amd64"
    assert p.stage("B") is p.stages[0]
    assert p.stage("0") is p.stages[0]
    assert p.stage("nginx") is None
