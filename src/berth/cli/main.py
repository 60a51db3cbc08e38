"""The ``berth`` command: the Engine API verbs (run, ps, images, ... in
:mod:`berth.cli.app`, through :mod:`berth.client`), ``berth runtime ...`` and
``berth registry ...``; ``berth system service`` (berthd in the foreground). A daemon
command with no host chosen starts berthd when none answers (:mod:`berth.cli.system_cmds`).

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
    if args[:2] == ["system", "service"]:
        from berth.cli.system_cmds import service

        return service(args[2:])
    if _needs_default_daemon(args):
        from berth.cli.app import EXIT_ERROR, error
        from berth.cli.system_cmds import ensure_daemon
        from berth.errors import BerthError

        try:
            ensure_daemon()
        except BerthError as exc:
            error(str(exc))
            return EXIT_ERROR
    from berth.cli.app import main as app_main

    code = app_main(args)
    if argv is None and _verb(args) == "build":
        _exit_now(code)
    return code


def _verb(args: list[str]) -> str | None:
    """The verb after the global options (-H HOST, --host=HOST, -D), as app reads them."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ("-H", "--host") else 1
    return args[i] if i < len(args) else None


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown (~3 ms of an unchanged
    rebuild's ~40): ``berth build`` has closed its files and socket and starts no
    threads. Only for the command itself (``argv`` None), never for a caller of main()."""
    import os

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        return  # let the interpreter report or ignore it as it does
    os._exit(code)


def _needs_default_daemon(args: list[str]) -> bool:
    """A daemon command with no host chosen (no -H, $BERTH_HOST, $DOCKER_HOST): the
    one case where ``berth`` may start berthd itself."""
    import os

    if os.environ.get("BERTH_HOST") or os.environ.get("DOCKER_HOST"):
        return False
    for arg in args:
        if arg in ("-H", "--host") or arg.startswith("--host="):
            return False
        if not arg.startswith("-"):  # the verb: global options end here
            return arg not in ("help",) and not any(a in ("-h", "--help") for a in args)
    return False


if __name__ == "__main__":
    sys.exit(main())
