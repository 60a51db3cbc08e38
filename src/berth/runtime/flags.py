"""A small command-line parser with runc's (urfave/cli's) rules.

Why not argparse: importing it costs ~4 ms, paid on every container start by a
runtime whose goal is to start containers as fast as runc. The rules are simple:
global flags, a verb, the verb's flags, then positionals; ``--flag value``,
``--flag=value``, Go's single-dash ``-flag`` and the short aliases runc has; flags
stop at the first positional (so ``exec ID sh -c ...`` passes ``-c`` to sh).
"""

from __future__ import annotations

from berth.errors import InvalidArgument

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# flag kinds
BOOL, VALUE, INT, LIST = "bool", "value", "int", "list"


class Flag:
    def __init__(self, names: str, kind: str, default: Any = None, help: str = "") -> None:
        self.names = names.split(",")
        self.dest = self.names[0].lstrip("-").replace("-", "_")
        self.kind = kind
        self.default = [] if kind == LIST else (False if kind == BOOL else default)
        self.help = help


class Verb:
    def __init__(
        self, name: str, help: str, flags: list[Flag], positionals: str = "", rest: str = ""
    ) -> None:
        self.name = name
        self.help = help
        self.flags = flags
        # "id signal?": a trailing ? makes a positional optional
        self.positionals = positionals.split()
        self.rest = rest  # name of a trailing list that takes everything left


class Namespace:
    """Parsed values as attributes, like argparse's."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def _lookup(flags: list[Flag]) -> dict[str, Flag]:
    table = {}
    for flag in flags:
        for name in flag.names:
            bare = name.lstrip("-")
            table["--" + bare] = flag
            table["-" + bare] = flag  # Go style, and the short aliases
    return table


def _take_flags(
    argv: list[str], index: int, flags: list[Flag], values: dict[str, Any], where: str
) -> int:
    table = _lookup(flags)
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            return index + 1
        if not arg.startswith("-") or arg == "-":
            return index
        name, has_value, inline = arg.partition("=")
        flag = table.get(name)
        if flag is None:
            raise InvalidArgument(f"{where}: unknown flag {name!r}; see --help")
        index += 1
        if flag.kind == BOOL:
            values[flag.dest] = inline.lower() not in {"false", "0"} if has_value else True
            continue
        if not has_value:
            if index >= len(argv):
                raise InvalidArgument(f"{where}: flag {name} needs a value")
            inline = argv[index]
            index += 1
        if flag.kind == INT:
            try:
                values[flag.dest] = int(inline)
            except ValueError:
                raise InvalidArgument(
                    f"{where}: flag {name} needs a number, not {inline!r}"
                ) from None
        elif flag.kind == LIST:
            values[flag.dest] = [*values[flag.dest], inline]
        else:
            values[flag.dest] = inline
    return index


def parse(argv: list[str], global_flags: list[Flag], verbs: list[Verb]) -> Namespace:
    values: dict[str, Any] = {flag.dest: flag.default for flag in global_flags}
    values["verb"] = None
    index = _take_flags(argv, 0, global_flags, values, "berth-runtime")
    if index >= len(argv):
        return Namespace(values)
    by_name = {verb.name: verb for verb in verbs}
    verb = by_name.get(argv[index])
    if verb is None:
        raise InvalidArgument(f"unknown command {argv[index]!r}; see 'berth-runtime --help'")
    values["verb"] = verb.name
    values.update({flag.dest: flag.default for flag in verb.flags})
    index = _take_flags(argv, index + 1, verb.flags, values, verb.name)
    if values.get("help"):
        return Namespace(values)
    for positional in verb.positionals:
        optional = positional.endswith("?")
        name = positional.rstrip("?")
        if index < len(argv):
            values[name] = argv[index]
            index += 1
        elif optional:
            values[name] = None
        else:
            raise InvalidArgument(f"{verb.name}: missing {name.upper()}; see '{verb.name} --help'")
        if not verb.rest:
            index = _take_flags(argv, index, verb.flags, values, verb.name)
    if verb.rest:
        values[verb.rest] = argv[index:]
    elif index < len(argv):
        raise InvalidArgument(f"{verb.name}: unexpected argument {argv[index]!r}")
    return Namespace(values)


def usage(prog: str, global_flags: list[Flag], verbs: list[Verb], verb: str | None = None) -> str:
    def describe(flags: list[Flag]) -> list[str]:
        lines = []
        for flag in flags:
            names = ", ".join(("-" if len(n.lstrip("-")) == 1 else "--") + n.lstrip("-")
                              for n in flag.names)  # fmt: skip
            value = "" if flag.kind == BOOL else " VALUE"
            lines.append(f"  {names}{value}".ljust(32) + flag.help)
        return lines

    if verb is not None:
        v = next(v for v in verbs if v.name == verb)
        args = " ".join(p.upper().rstrip("?") for p in v.positionals)
        rest = f" [{v.rest.upper()}...]" if v.rest else ""
        return "\n".join([f"usage: {prog} {v.name} [flags] {args}{rest}", "", v.help, "",
                          *describe(v.flags)]) + "\n"  # fmt: skip
    lines = [f"usage: {prog} [global flags] COMMAND [flags] ARGS", "", "commands:"]
    lines += [f"  {v.name}".ljust(12) + v.help for v in verbs]
    lines += ["", "global flags:", *describe(global_flags)]
    return "\n".join(lines) + "\n"
