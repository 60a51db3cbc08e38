"""The ``berth`` command. For now it offers the runtime (``berth runtime ...``);
the Engine API verbs (run, ps, images, ...) arrive with the daemon."""

from __future__ import annotations

import sys

from berth import __version__

USAGE = """usage: berth [--version] COMMAND

commands:
  runtime ARGS...   the OCI runtime (the same as berth-runtime ARGS...)
  registry serve    an OCI distribution registry (berth registry serve --help)
  registry gc       free blobs no manifest references
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] in {"-v", "--version", "version"}:
        print(f"berth version {__version__}")
        return 0
    if args[0] == "runtime":
        from berth.runtime.cli import main as runtime_main

        return runtime_main(args[1:])
    if args[0] == "registry":
        from berth.cli.registry import main as registry_main

        return registry_main(args[1:])
    print(f"berth: unknown command {args[0]!r}; see 'berth --help'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
