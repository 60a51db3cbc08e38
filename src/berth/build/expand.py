"""Variable expansion of instructions, and the ARG/ENV scoping a build runs with.

Which instructions expand which words is Docker's list: ADD, COPY (sources, dest,
``--chown``, ``--chmod``, ``--checksum``; never ``--from``), ENV and LABEL (keys and
values), ARG (names and defaults), EXPOSE (the one instruction whose expansion is split
into several words), VOLUME, WORKDIR, USER, STOPSIGNAL, and ``RUN --mount`` values. FROM
is expanded against the global (before the first FROM) ARGs only. RUN, CMD,
ENTRYPOINT, SHELL, HEALTHCHECK, MAINTAINER and ONBUILD are kept as written: the shell
(or the child build) sees them later.

Scoping: an ARG before the first FROM is global and only FROM lines see it, unless a
stage declares ``ARG NAME`` again (which then inherits the global default). A stage
ARG is visible from its line to the end of the stage. ENV wins over ARG of the same
name. The proxy ARGs (HTTP_PROXY and friends) need no declaration and stay out of the
cache key unless declared; the platform ARGs (TARGETPLATFORM, BUILDARCH...) are set
automatically in the global scope and must be declared in a stage to be seen there.
"""

from __future__ import annotations

import json
import platform as _platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from berth.build.errors import BuildError
from berth.build.parser import Heredoc, Instruction, parse_heredoc, parse_mount
from berth.build.shell import Expansion, LexError, ShellLex

__all__ = [
    "PLATFORM_ARGS",
    "PROXY_ARGS",
    "Expanded",
    "Expansion",
    "ShellLex",
    "StageScope",
    "expand_from",
    "platform_args",
    "resolve_meta_args",
]

PROXY_ARGS = frozenset(
    {
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "FTP_PROXY",
        "ftp_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    }
)
PLATFORM_ARGS = (
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
)
_MACHINE_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def host_platform() -> str:
    """This machine as an OCI platform string (linux/amd64, linux/arm/v7...)."""
    arch, variant = _MACHINE_ARCH.get(_platform.machine().lower(), (_platform.machine(), ""))
    return "linux/" + arch + (f"/{variant}" if variant else "")


def _split_platform(spec: str) -> tuple[str, str, str]:
    parts = spec.split("/")
    os_ = parts[0] if parts else "linux"
    arch = parts[1] if len(parts) > 1 else ""
    variant = parts[2] if len(parts) > 2 else ""
    if arch == "arm64" and variant == "v8":
        variant = ""
    return os_, arch, variant


def platform_args(target: str | None = None, build: str | None = None) -> dict[str, str]:
    """The automatic platform ARGs for a build targeting ``target`` on ``build``."""
    build = build or host_platform()
    target = target or build
    out: dict[str, str] = {}
    for prefix, spec in (("TARGET", target), ("BUILD", build)):
        os_, arch, variant = _split_platform(spec)
        out[prefix + "PLATFORM"] = f"{os_}/{arch}" + (f"/{variant}" if variant else "")
        out[prefix + "OS"] = os_
        out[prefix + "ARCH"] = arch
        out[prefix + "VARIANT"] = variant
    return out


def _lex_error(ins: Instruction, exc: LexError, filename: str) -> BuildError:
    return BuildError(exc.reason, ins.start_line, ins.column, filename)


def resolve_meta_args(
    meta: Iterable[Instruction],
    build_args: Mapping[str, str],
    escape: str = "\\",
    platform: Mapping[str, str] | None = None,
    filename: str = "Dockerfile",
) -> dict[str, str | None]:
    """The global ARGs (those before the first FROM): name -> value, None when unset.

    A ``--build-arg`` wins over the default; a default is expanded with the global ARGs
    declared before it (and the platform ARGs).
    """
    lex = ShellLex(escape)
    values: dict[str, str | None] = {}
    for ins in meta:
        env = _meta_env(values, build_args, platform or {})
        resolved: list[tuple[str, str | None]] = []
        for key, default in ins.arg_pairs:
            try:
                key = lex.process_word(key, env)
                if key in build_args:
                    resolved.append((key, build_args[key]))
                elif default is not None:
                    resolved.append((key, lex.process_word(default, env)))
                else:
                    resolved.append((key, None))
            except LexError as exc:
                raise _lex_error(ins, exc, filename) from None
        values.update(resolved)
    return values


def _meta_env(
    meta: Mapping[str, str | None], build_args: Mapping[str, str], platform: Mapping[str, str]
) -> dict[str, str]:
    env = dict(platform)
    env.update({k: v for k, v in build_args.items() if k in PROXY_ARGS})
    env.update({k: v for k, v in meta.items() if v is not None})
    return env


def expand_from(
    ins: Instruction,
    meta: Mapping[str, str | None],
    build_args: Mapping[str, str] | None = None,
    escape: str = "\\",
    platform: Mapping[str, str] | None = None,
    filename: str = "Dockerfile",
) -> tuple[str, str, set[str]]:
    """A FROM line's base name and ``--platform`` expanded with the global ARGs.

    Returns (base, platform, names of the ARGs used). An empty base is an error, as in
    Docker (it would otherwise silently mean scratch).
    """
    env = _meta_env(meta, build_args or {}, platform or {})
    lex = ShellLex(escape)
    try:
        base = lex.process(ins.args[0], env)
        plat = lex.process(ins.option("platform"), env)
    except LexError as exc:
        raise _lex_error(ins, exc, filename) from None
    if not base.value:
        raise ins.error(f"base name ({ins.args[0]}) should not be blank", filename)
    return base.value, plat.value, base.matched | plat.matched


@dataclass
class Expanded:
    """One instruction after expansion, as the executor and the cache key need it.

    ``args`` are the expanded words (for ENV/LABEL/ARG see ``pairs``); ``options`` the
    flags with their values expanded; ``heredocs`` with COPY/ADD content expanded where
    the delimiter was not quoted; ``sources`` the COPY/ADD source paths (heredoc
    markers removed) and ``dest`` the destination; ``used_args`` the build ARGs (name ->
    value) this step depends on; ``text`` the instruction as written after expansion.
    """

    ins: Instruction
    args: list[str]
    options: dict[str, str | bool | list[str]]
    pairs: list[tuple[str, str | None]] = field(default_factory=list)
    heredocs: list[Heredoc] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    dest: str = ""
    used_args: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @property
    def cmd(self) -> str:
        return self.ins.cmd


_EXPANDED_OPTIONS = {"ADD": ("chown", "chmod", "checksum"), "COPY": ("chown", "chmod")}


class StageScope:
    """The variables of one stage while it is built: image ENV, declared ARGs.

    ``env`` starts as the base image's ``Env`` (``KEY=value`` strings); ``dispatch``
    expands an instruction and applies ENV and ARG to the scope, in Dockerfile order.
    """

    def __init__(
        self,
        build_args: Mapping[str, str] | None = None,
        meta: Mapping[str, str | None] | None = None,
        env: Iterable[str] = (),
        escape: str = "\\",
        platform: Mapping[str, str] | None = None,
        filename: str = "Dockerfile",
    ) -> None:
        self.build_args = dict(build_args or {})
        self.meta = dict(meta or {})
        self.platform = dict(platform or {})
        self.escape = escape
        self.filename = filename
        self.lex = ShellLex(escape)
        self.env: dict[str, str] = {}
        for item in env:
            key, _, value = item.partition("=")
            self.env[key] = value
        self.args: dict[str, str | None] = {}

    # -- the environment words are expanded against ------------------------------------

    def arg_values(self) -> dict[str, str]:
        """Declared ARGs that have a value, plus proxy ARGs given on the command line."""
        out = {k: v for k, v in self.build_args.items() if k in PROXY_ARGS}
        out.update({k: v for k, v in self.args.items() if v is not None})
        return out

    def expansion_env(self) -> dict[str, str]:
        """ENV first, then ARGs not shadowed by an ENV of the same name."""
        env = dict(self.env)
        for key, value in self.arg_values().items():
            env.setdefault(key, value)
        return env

    def run_args(self) -> dict[str, str]:
        """The ARGs a RUN step gets in its environment (those ENV does not shadow)."""
        return {k: v for k, v in self.arg_values().items() if k not in self.env}

    def run_cache_args(self) -> dict[str, str]:
        """The ARGs a RUN step's cache key includes: like ``run_args`` minus proxy ARGs
        that were never declared (they are transparent, as in Docker)."""
        return {k: v for k, v in self.run_args().items() if k not in PROXY_ARGS or k in self.args}

    def env_list(self) -> list[str]:
        """The image config's Env, in order."""
        return [f"{k}={v}" for k, v in self.env.items()]

    # -- expansion ------------------------------------------------------------------------

    def _word(self, word: str, env: Mapping[str, str], used: set[str]) -> str:
        result = self.lex.process(word, env)
        used |= result.matched
        return result.value

    def expand(self, ins: Instruction) -> Expanded:
        """Expand ``ins`` against the current scope, without applying it."""
        env = self.expansion_env()
        used: set[str] = set()
        out = Expanded(ins, list(ins.args), dict(ins.options))
        try:
            self._expand_into(out, env, used)
        except LexError as exc:
            raise _lex_error(ins, exc, self.filename) from None
        arg_values = self.arg_values()
        out.used_args = {
            k: arg_values[k] for k in sorted(used) if k in arg_values and k not in self.env
        }
        if ins.cmd == "RUN":
            out.used_args.update(self.run_cache_args())
            out.used_args = dict(sorted(out.used_args.items()))
        out.text = _render(out)
        return out

    def _expand_into(self, out: Expanded, env: Mapping[str, str], used: set[str]) -> None:
        ins = out.ins
        cmd = ins.cmd
        if cmd in ("ENV", "LABEL"):
            out.pairs = [(self._word(k, env, used), self._word(v, env, used)) for k, v in ins.pairs]
            out.args = [x for pair in out.pairs for x in pair if x is not None]
        elif cmd == "ARG":
            pairs: list[tuple[str, str | None]] = []
            for key, default in ins.arg_pairs:
                key = self._word(key, env, used)
                value = None if default is None else self._word(default, env, used)
                pairs.append((key, value))
            out.pairs = pairs
        elif cmd == "EXPOSE":
            words: list[str] = []
            for arg in ins.args:
                result = self.lex.process(arg, env)
                used |= result.matched
                words += result.words
            out.args = words
        elif cmd in ("VOLUME", "WORKDIR", "USER", "STOPSIGNAL"):
            out.args = [self._word(a, env, used) for a in ins.args]
        elif cmd in ("ADD", "COPY"):
            self._expand_copy(out, env, used)
        elif cmd == "RUN" and "mount" in ins.options:
            mounts = ins.options["mount"]
            assert isinstance(mounts, list)
            out.options["mount"] = [self._word(m, env, used) for m in mounts]

    def _expand_copy(self, out: Expanded, env: Mapping[str, str], used: set[str]) -> None:
        ins = out.ins
        for name in _EXPANDED_OPTIONS[ins.cmd]:
            if name in ins.options:
                out.options[name] = self._word(ins.option(name), env, used)
        docs = {d.name: d for d in ins.heredocs}
        raw_lex = ShellLex("\\", skip_quotes=True)
        sources: list[str] = []
        heredocs: list[Heredoc] = []
        for src in ins.args[:-1]:
            marker = parse_heredoc(src)
            if marker is None:
                sources.append(self._word(src, env, used))
                continue
            doc = docs.get(marker.name, Heredoc(marker.name, ""))
            data = doc.data
            if marker.expand:
                result = raw_lex.process(data, env)
                used |= result.matched
                data = result.value
            heredocs.append(Heredoc(doc.name, data, marker.expand, False, doc.fd))
        out.sources = sources
        out.heredocs = heredocs
        out.dest = self._word(ins.args[-1], env, used)
        out.args = [*sources, out.dest]

    # -- applying ---------------------------------------------------------------------------

    def apply(self, step: Expanded) -> None:
        """Record what an ENV or ARG step changes in the scope."""
        if step.cmd == "ENV":
            for key, value in step.pairs:
                self.env[key] = value or ""
        elif step.cmd == "ARG":
            for key, default in step.pairs:
                self.args[key] = self._arg_value(key, default)

    def _arg_value(self, key: str, default: str | None) -> str | None:
        if key in self.build_args:
            return self.build_args[key]
        if default is not None:
            return default
        if self.meta.get(key) is not None:
            return self.meta[key]
        return self.platform.get(key)

    def dispatch(self, ins: Instruction) -> Expanded:
        """Expand then apply: the normal way to walk a stage's instructions."""
        step = self.expand(ins)
        self.apply(step)
        return step


def _render(step: Expanded) -> str:
    """The instruction as written after expansion (history and cache key text)."""
    ins = step.ins
    cmd = ins.cmd
    flags = []
    for name, value in step.options.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--{name}=false")
        elif isinstance(value, list):
            flags += [f"--{name}={v}" for v in value]
        else:
            flags.append(f"--{name}={value}")
    head = " ".join([cmd, *flags])
    if cmd in ("ENV", "LABEL"):
        body = " ".join(f"{k}={v}" for k, v in step.pairs)
    elif cmd == "ARG":
        body = " ".join(k if v is None else f"{k}={v}" for k, v in step.pairs)
    elif cmd in ("ADD", "COPY"):
        names = [f"<<{d.name}" for d in step.heredocs]
        body = " ".join([*step.sources, *names, step.dest])
    elif ins.json:
        body = "[" + ", ".join(_json_str(a) for a in step.args) + "]"
    else:
        body = " ".join(step.args)
    return f"{head} {body}".rstrip() if body else head


def _json_str(value: str) -> str:
    return json.dumps(value)


# Kept for callers that only want the mount fields with their values expanded.
def expanded_mounts(step: Expanded) -> list[dict[str, str]]:
    """The RUN step's ``--mount`` flags, expanded and parsed."""
    mounts = step.options.get("mount", [])
    return [parse_mount(m) for m in mounts] if isinstance(mounts, list) else []
