"""Stages of a multi-stage Dockerfile, the ones a target needs, and what can run at once.

A stage starts at each FROM. It depends on another stage when its FROM names it (after
expanding global ARGs), when a ``COPY --from`` names it or gives its index, or when a
``RUN --mount=...,from=`` names it. Names are case-insensitive. Anything else named in
those places is an image to pull. The plan lists only the stages the target reaches,
and groups them into waves: every stage of a wave depends only on earlier waves, so a
wave's stages may build in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from berth.build.errors import BuildError
from berth.build.expand import expand_from, resolve_meta_args
from berth.build.parser import Dockerfile, Instruction, parse_mount


@dataclass
class Stage:
    """One FROM and the instructions up to the next FROM."""

    index: int
    name: str  # lower-cased; "" for an unnamed stage
    from_ins: Instruction
    instructions: list[Instruction] = field(default_factory=list)
    base: str = ""  # the FROM name after expansion
    platform: str = ""  # --platform after expansion
    base_stage: int | None = None  # index of the stage FROM refers to, if any
    deps: set[int] = field(default_factory=set)  # every stage this one needs
    images: list[str] = field(default_factory=list)  # COPY --from / mount images

    @property
    def scratch(self) -> bool:
        return self.base_stage is None and self.base.lower() == "scratch"

    @property
    def label(self) -> str:
        """How messages name the stage."""
        return self.name or str(self.index)


@dataclass
class BuildPlan:
    """Everything the executor needs before it runs anything."""

    stages: list[Stage]
    meta_args: list[Instruction]
    meta: dict[str, str | None]
    target: int
    needed: list[int]  # stage indexes the target reaches, in Dockerfile order
    waves: list[list[int]]  # needed stages grouped for parallel building

    def stage(self, ref: str) -> Stage | None:
        """A stage by name or index, as COPY --from resolves it."""
        index = _lookup(self.stages, ref, len(self.stages))
        return None if index is None else self.stages[index]


def split_stages(df: Dockerfile) -> tuple[list[Instruction], list[Stage]]:
    """The global ARG instructions and the stages, in order."""
    meta: list[Instruction] = []
    stages: list[Stage] = []
    for ins in df.instructions:
        if ins.cmd == "FROM":
            name = ins.args[2].lower() if len(ins.args) == 3 else ""
            if name and any(s.name == name for s in stages):
                raise ins.error(f"duplicate stage name {name!r}", df.filename)
            stages.append(Stage(len(stages), name, ins))
        elif not stages:
            if ins.cmd != "ARG":
                raise ins.error("no build stage in current context", df.filename)
            meta.append(ins)
        else:
            stages[-1].instructions.append(ins)
    return meta, stages


def _lookup(stages: list[Stage], ref: str, current: int) -> int | None:
    low = ref.lower()
    for stage in stages:
        if stage.name and stage.name == low:
            return stage.index
    if ref.isdigit():
        index = int(ref)
        return index if index < current else None
    return None


def plan(
    df: Dockerfile,
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    platform: Mapping[str, str] | None = None,
) -> BuildPlan:
    """Resolve stages and dependencies for ``target`` (default: the last stage)."""
    build_args = dict(build_args or {})
    meta_ins, stages = split_stages(df)
    if not stages:
        raise BuildError("no build stage in Dockerfile (it needs a FROM)", None, None)
    meta = resolve_meta_args(meta_ins, build_args, df.escape, platform, df.filename)
    for stage in stages:
        _resolve(df, stages, stage, meta, build_args, platform or {})
    _check_cycles(df, stages)

    if target:
        found = [s.index for s in stages if s.name == target.lower()]
        if not found:
            raise BuildError(f"target stage {target!r} could not be found")
        target_index = found[0]
    else:
        target_index = len(stages) - 1
    needed: set[int] = set()
    todo = [target_index]
    while todo:
        index = todo.pop()
        if index in needed:
            continue
        needed.add(index)
        todo.extend(stages[index].deps)
    return BuildPlan(stages, meta_ins, meta, target_index, sorted(needed), waves(stages, needed))


def _resolve(
    df: Dockerfile,
    stages: list[Stage],
    stage: Stage,
    meta: Mapping[str, str | None],
    build_args: Mapping[str, str],
    platform: Mapping[str, str],
) -> None:
    base, plat, _ = expand_from(stage.from_ins, meta, build_args, df.escape, platform, df.filename)
    stage.base, stage.platform = base, plat
    low = base.lower()
    for other in stages:
        if other.name and other.name == low:
            if other.index == stage.index:
                raise stage.from_ins.error(
                    f"stage {stage.name!r} cannot use itself as its base", df.filename
                )
            stage.base_stage = other.index
            stage.deps.add(other.index)
    for ins in stage.instructions:
        for ref in _references(ins):
            index = _reference(df, stages, stage, ins, ref)
            if index is None:
                if ref not in stage.images:
                    stage.images.append(ref)
            else:
                stage.deps.add(index)


def _references(ins: Instruction) -> list[str]:
    """Stage or image names an instruction reads from (ONBUILD ones run elsewhere)."""
    if ins.cmd == "COPY" and ins.option("from"):
        return [ins.option("from")]
    if ins.cmd == "RUN":
        mounts = ins.options.get("mount", [])
        refs = []
        for spec in mounts if isinstance(mounts, list) else []:
            source = parse_mount(spec).get("from", "")
            if source:
                refs.append(source)
        return refs
    return []


def _reference(
    df: Dockerfile, stages: list[Stage], stage: Stage, ins: Instruction, ref: str
) -> int | None:
    low = ref.lower()
    for other in stages:
        if other.name and other.name == low:
            if other.index == stage.index:
                raise ins.error(f"{ref!r} refers to the current build stage", df.filename)
            return other.index
    if ref.isdigit():
        index = int(ref)
        if index == stage.index:
            raise ins.error(f"--from={ref} refers to the current build stage", df.filename)
        if index > stage.index:
            raise ins.error(f"--from={ref}: index out of bounds", df.filename)
        return index
    return None


def _check_cycles(df: Dockerfile, stages: list[Stage]) -> None:
    state: dict[int, int] = {}  # 1 = visiting, 2 = done

    def visit(index: int, path: list[int]) -> None:
        if state.get(index) == 2:
            return
        if state.get(index) == 1:
            names = " -> ".join(stages[i].label for i in [*path, index])
            raise stages[index].from_ins.error(
                f"circular dependency between stages: {names}", df.filename
            )
        state[index] = 1
        for dep in sorted(stages[index].deps):
            visit(dep, [*path, index])
        state[index] = 2

    for stage in stages:
        visit(stage.index, [])


def waves(stages: list[Stage], needed: set[int] | None = None) -> list[list[int]]:
    """Needed stages grouped so each group depends only on earlier groups."""
    remaining = set(range(len(stages))) if needed is None else set(needed)
    done: set[int] = set()
    out: list[list[int]] = []
    while remaining:
        ready = sorted(i for i in remaining if not stages[i].deps & remaining)
        if not ready:  # unreachable after _check_cycles; guards against a bad graph
            raise BuildError("circular dependency between stages")
        out.append(ready)
        done.update(ready)
        remaining.difference_update(ready)
    return out
