"""The ``berth`` command: the Engine API verbs (run, ps, images, ... in
:mod:`berth.cli.app`, through :mod:`berth.client`), ``berth runtime ...`` and
``berth registry ...``.

Start-up cost matters here (``berth ps``): this module imports nothing beyond ``sys``
and the version; each verb loads what it needs.
"""

from __future__ import annotations

import sys

from berth import __version__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in {"-v", "--version"}:
        print(f"berth version {__version__}")
        return 0
    if args and args[0] in {"-h", "--help", "help"}:
        from berth.cli.app import usage

        print(usage(), end="")
        return 0
    if args and args[0] == "runtime":
        from berth.runtime.cli import main as runtime_main

        return runtime_main(args[1:])
    if args and args[0] == "registry":
        from berth.cli.registry import main as registry_main

        return registry_main(args[1:])
    from berth.cli.app import main as app_main

    return app_main(args)


if __name__ == "__main__":
    sys.exit(main())
