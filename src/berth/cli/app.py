"""The Engine API verbs of ``berth``: argument parsing, dispatch and the one error mapping.

Only the invoked verb's parser is built and only its module imported, so ``berth ps``
loads argparse, the client (http.client) and the table formatter, nothing more.
Every failure becomes one line on stderr, ``berth: <message>``, and exit code 125 (as
``docker run`` reports daemon and usage errors); ``run``, ``start -a`` and ``exec``
exit with the container's code.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up; annotations stay strings here
    import argparse
    from collections.abc import Callable
    from typing import Any, NoReturn

    # verb -> (module, handler function, argument builder, one-line help)
    Builder = Callable[[argparse.ArgumentParser], None]

# argparse (with gettext and locale, ~4 ms) loads when a verb's parser is built: not for
# `berth build`'s usual arguments, which build_cmd.quick_arguments reads itself.

EXIT_ERROR = 125

# `berth container X` / `berth image X` -> the top-level verb
CONTAINER_GROUP = {
    "ls": "ps",
    "list": "ps",
    "ps": "ps",
    "remove": "rm",
    **{
        v: v
        for v in [
            "run",
            "create",
            "start",
            "stop",
            "restart",
            "kill",
            "rm",
            "inspect",
            "logs",
            "wait",
            "exec",
            "attach",
            "pause",
            "unpause",
            "cp",
            "diff",
            "export",
            "commit",
            "top",
            "stats",
            "rename",
            "port",
            "update",
        ]
    },
    "prune": "container-prune",
}
IMAGE_GROUP = {
    "ls": "images",
    "list": "images",
    "rm": "rmi",
    "remove": "rmi",
    "pull": "pull",
    "tag": "tag",
    "inspect": "inspect",
    "bootstrap": "bootstrap",
    "push": "push",
    "save": "save",
    "load": "load",
    "import": "import",
    "history": "history",
    "prune": "image-prune",
}

SYSTEM_GROUP = {
    "df": "system-df",
    "prune": "system-prune",
    "info": "info",
    "events": "events",
    # "service" (berthd in the foreground) is handled in berth.cli.main
}
VOLUME_GROUP = {
    "prune": "volume-prune",
    "create": "volume-create",
    "ls": "volume-ls",
    "list": "volume-ls",
    "inspect": "volume-inspect",
    "rm": "volume-rm",
    "remove": "volume-rm",
}
NETWORK_GROUP = {
    "create": "network-create",
    "ls": "network-ls",
    "list": "network-ls",
    "inspect": "network-inspect",
    "rm": "network-rm",
    "remove": "network-rm",
    "connect": "network-connect",
    "disconnect": "network-disconnect",
    "prune": "network-prune",
}
# group -> its table; verbs named "group-x" are reached only through their group
GROUPS = {
    "network": NETWORK_GROUP,
    "container": CONTAINER_GROUP,
    "image": IMAGE_GROUP,
    "system": SYSTEM_GROUP,
    "volume": VOLUME_GROUP,
}


class UsageError(Exception):
    pass


def _parser(prog: str, description: str, add_help: bool) -> argparse.ArgumentParser:
    """argparse reporting one line and exit code 125, as the docker CLI does."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{self.prog}: {message}; see '{self.prog} --help'")

        def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
            if message:
                print(message, end="", file=sys.stderr)
            raise SystemExit(status)

    return _Parser(
        prog=prog, description=description, add_help=add_help, formatter_class=_formatter
    )


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter without its ``import shutil`` (bz2, lzma: ~2 ms) for the width."""
    import argparse

    try:
        width = int(os.environ.get("COLUMNS") or os.get_terminal_size().columns)
    except (OSError, ValueError, AttributeError):
        width = 80
    return argparse.HelpFormatter(prog, width=max(width - 2, 40))


def one_line(message: str) -> str:
    """A daemon's or exception's message as one lower-case line."""
    text = " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())
    if not text:
        return "unknown error"
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


def error(message: str) -> None:
    print(f"berth: {one_line(message)}", file=sys.stderr)


# ---- argument builders --------------------------------------------------------------------


def _containers(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _container_options(p: argparse.ArgumentParser, *, run: bool) -> None:
    import argparse

    p.add_argument("--help", action="help", help="show this help and exit")
    if run:
        p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("--name", help="the container's name")
    p.add_argument("-e", "--env", action="append", default=[], metavar="VAR[=VALUE]")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY[=VALUE]")
    p.add_argument("-w", "--workdir", metavar="DIR")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:OPTS]")
    p.add_argument("--entrypoint", metavar="CMD")
    p.add_argument("-h", "--hostname")
    p.add_argument("--network", "--net", metavar="NAME", help="bridge, none, host, a network")
    _builder("network_cmds", "run_arguments")(p)
    p.add_argument("-m", "--memory", metavar="BYTES", help="memory limit (512m, 1g)")
    p.add_argument("--memory-swap", metavar="BYTES", help="memory plus swap (-1: unlimited)")
    p.add_argument("--pids-limit", type=int, metavar="N")
    p.add_argument("--cpus", type=float, metavar="N", help="number of CPUs (1.5)")
    p.add_argument("-c", "--cpu-shares", type=int, metavar="N")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--read-only", action="store_true", help="mount the root read-only")
    p.add_argument("--security-opt", action="append", default=[], metavar="OPT")
    p.add_argument("--restart", metavar="POLICY", help="no, always, unless-stopped, on-failure[:N]")
    p.add_argument("--init", action="store_true", help="run an init (tini) as pid 1")
    p.add_argument("--runtime", metavar="NAME", help="berth-runtime, runc, crun, ...")
    p.add_argument("--cpuset-cpus", metavar="LIST", help="CPUs allowed (0-2,4)")
    p.add_argument("--cpuset-mems", metavar="LIST", help="memory nodes allowed")
    p.add_argument("--group-add", action="append", default=[], metavar="GROUP")
    p.add_argument("--pid", metavar="host|container:NAME", help="pid namespace")
    p.add_argument("--ipc", metavar="MODE", help="private, shareable, host, container:NAME")
    p.add_argument("--uts", metavar="host", help="uts namespace")
    p.add_argument("--log-driver", metavar="json-file|local|none")
    p.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]")
    p.add_argument("--device", action="append", default=[], metavar="HOST[:CONTAINER[:RWM]]")
    p.add_argument("--shm-size", metavar="BYTES", help="size of /dev/shm (64m)")
    p.add_argument("--stop-signal", metavar="SIGNAL")
    p.add_argument("--stop-timeout", type=int, metavar="SECONDS")
    p.add_argument("--health-cmd", metavar="CMD", help="command run to check health")
    p.add_argument("--health-interval", metavar="DURATION", help="time between checks (30s)")
    p.add_argument("--health-timeout", metavar="DURATION", help="longest a check may run")
    p.add_argument("--health-start-period", metavar="DURATION", help="grace period at start")
    p.add_argument("--health-start-interval", metavar="DURATION", help="checks in the grace")
    p.add_argument("--health-retries", type=int, metavar="N", help="failures for unhealthy")
    p.add_argument("--no-healthcheck", action="store_true", help="disable the image's check")
    if run:
        p.add_argument("--detach-keys", metavar="KEYS", help="detach sequence (ctrl-p,ctrl-q)")
    p.add_argument("--pull", choices=("missing", "never", "always"), default="missing")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")


def _run(p: argparse.ArgumentParser) -> None:
    _container_options(p, run=True)


def _create(p: argparse.ArgumentParser) -> None:
    _container_options(p, run=False)


def _exec(p: argparse.ArgumentParser) -> None:
    import argparse

    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="VAR[=VALUE]")
    p.add_argument("-w", "--workdir", metavar="DIR")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--detach-keys", metavar="KEYS", help="detach sequence (ctrl-p,ctrl-q)")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")


def _ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="all containers, not only running")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--format", metavar="json|table|TEMPLATE")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-n", "--last", type=int, default=-1, metavar="N")
    p.add_argument("-l", "--latest", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE")


def _logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", default="all", metavar="N", help="lines from the end")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("--since", metavar="SECONDS", help="seconds since the epoch")
    p.add_argument("--until", metavar="SECONDS", help="seconds since the epoch")
    p.add_argument("container", metavar="CONTAINER")


def _start(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--attach", action="store_true", help="attach stdout/stderr")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    _containers(p)


def _stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", "--timeout", type=int, metavar="SECONDS")
    p.add_argument("-s", "--signal", metavar="SIGNAL")
    _containers(p)


def _restart(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", "--timeout", type=int, metavar="SECONDS")
    _containers(p)


def _kill(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", metavar="SIGNAL")
    _containers(p)


def _rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill a running container")
    p.add_argument("-v", "--volumes", action="store_true", help="remove anonymous volumes")
    _containers(p)


def _inspect(p: argparse.ArgumentParser) -> None:
    import argparse

    p.add_argument("-f", "--format", metavar="TEMPLATE")
    p.add_argument("--type", choices=("container", "image"))
    p.add_argument("-s", "--size", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("names", nargs="+", metavar="NAME")


def _attach(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-stdin", action="store_true")
    p.add_argument("--detach-keys", metavar="KEYS", help="detach sequence (ctrl-p,ctrl-q)")
    p.add_argument("container", metavar="CONTAINER")


def _images(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--format", metavar="json|table|TEMPLATE")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")


def _rmi(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--no-prune", action="store_true")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def _tag(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")


def _pull(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")


def _bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name", nargs="?", default="busybox", metavar="NAME", help="busybox or debian:bookworm"
    )


def _events(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="TIME", help="timestamp or duration (10m)")
    p.add_argument("--until", metavar="TIME", help="timestamp or duration (10m)")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", metavar="json|TEMPLATE")


def _system_df(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="show each object")
    p.add_argument("--format", metavar="json|TEMPLATE")


def _system_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="also unused images, not only dangling")
    p.add_argument("--volumes", action="store_true", help="also anonymous volumes")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")


def _volume_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="named volumes too")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")


def _cp(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--archive", action="store_true", help="keep the container user's ids")
    p.add_argument("-L", "--follow-link", action="store_true", help="follow a symlink source")
    p.add_argument("source", metavar="SRC", help="CONTAINER:PATH, a local path, or - (tar)")
    p.add_argument("dest", metavar="DEST", help="CONTAINER:PATH, a local path, or - (tar)")


def _one_container(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    p.add_argument("container", metavar="CONTAINER")


def _build(p: argparse.ArgumentParser) -> None:
    from berth.cli.build_cmd import arguments

    arguments(p)


def _commit(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--author", metavar="AUTHOR")
    p.add_argument("-m", "--message", metavar="MESSAGE")
    p.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION")
    p.add_argument("-p", dest="pause", action="store_const", const="true", default="true")
    p.add_argument("--pause", dest="pause", metavar="true|false", help="pause while committing")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")


def _push(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all-tags", action="store_true", help="push every tag of the name")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    p.add_argument("name", metavar="NAME[:TAG]")


def _save(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def _load(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", metavar="FILE", help="read a tar from FILE, not stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")


def _import(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--change", action="append", default=[], metavar="INSTRUCTION")
    p.add_argument("-m", "--message", metavar="MESSAGE", help="the commit message")
    p.add_argument("--platform", metavar="OS/ARCH")
    p.add_argument("file", metavar="FILE|-")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")


def _bool_flag(value: str) -> bool:
    import argparse

    if value.lower() in ("1", "true", "t", "yes"):
        return True
    if value.lower() in ("0", "false", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r}")


def _history(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", metavar="json|table|TEMPLATE")
    p.add_argument("-H", "--human", type=_bool_flag, nargs="?", const=True, default=True)
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("image", metavar="IMAGE")


def _login(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("server", nargs="?", metavar="SERVER")


def _logout(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", nargs="?", metavar="SERVER")


def _image_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="all unused images, not only dangling")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")


def _builder(module: str, name: str) -> Builder:
    """An argument builder kept in the verb's own module (imported only for that verb)."""

    def build(p: argparse.ArgumentParser) -> None:
        from importlib import import_module

        getattr(import_module(f"berth.cli.{module}"), name)(p)

    return build


def _format_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", metavar="json|TEMPLATE")


VERBS: dict[str, tuple[str, str, Builder, str]] = {
    "run": ("interactive", "run", _run, "create and start a container"),
    "create": ("interactive", "create", _create, "create a container"),
    "exec": ("interactive", "exec_", _exec, "run a command in a running container"),
    "ps": ("commands", "ps", _ps, "list containers"),
    "logs": ("interactive", "logs", _logs, "show a container's output"),
    "start": ("interactive", "start", _start, "start containers"),
    "stop": ("commands", "stop", _stop, "stop containers"),
    "restart": ("commands", "restart", _restart, "restart containers"),
    "kill": ("commands", "kill", _kill, "send a signal to containers"),
    "rm": ("commands", "rm", _rm, "remove containers"),
    "pause": ("commands", "pause", _containers, "pause containers"),
    "unpause": ("commands", "unpause", _containers, "unpause containers"),
    "wait": ("commands", "wait", _containers, "wait for containers to stop; print exit codes"),
    "attach": ("interactive", "attach", _attach, "attach to a running container"),
    "inspect": ("commands", "inspect", _inspect, "JSON of containers or images"),
    "images": ("commands", "images", _images, "list images"),
    "rmi": ("commands", "rmi", _rmi, "remove images"),
    "tag": ("commands", "tag", _tag, "name an image"),
    "pull": ("commands", "pull", _pull, "pull an image from a registry"),
    "bootstrap": ("commands", "bootstrap", _bootstrap, "make a base image locally"),
    "push": ("image_cmds", "push", _push, "push an image to a registry"),
    "save": ("image_cmds", "save", _save, "images as a tar (docker save)"),
    "load": ("image_cmds", "load", _load, "images from a tar (docker load)"),
    "import": ("image_cmds", "import_", _import, "an image from a root filesystem tar"),
    "history": ("image_cmds", "history", _history, "an image's layers and history"),
    "login": ("image_cmds", "login", _login, "log in to a registry"),
    "logout": ("image_cmds", "logout", _logout, "log out of a registry"),
    "image-prune": ("image_cmds", "image_prune", _image_prune, "remove unused images"),
    "cp": ("archive_cmds", "cp", _cp, "copy files between a container and here"),
    "diff": ("archive_cmds", "diff", _one_container, "changes to a container's files"),
    "export": ("archive_cmds", "export", _export, "a container's filesystem as a tar"),
    "commit": ("archive_cmds", "commit", _commit, "a new image from a container's changes"),
    "build": ("build_cmd", "build", _build, "build an image from a Dockerfile"),
    "version": ("commands", "version", _format_only, "client and daemon versions"),
    "info": ("commands", "info", _format_only, "system-wide information"),
    "events": ("system_cmds", "events", _events, "stream the daemon's events"),
    "system-df": ("system_cmds", "system_df", _system_df, "disk usage"),
    "system-prune": ("system_cmds", "system_prune", _system_prune, "remove unused data"),
    "volume-prune": ("system_cmds", "volume_prune", _volume_prune, "remove unused volumes"),
    "top": (
        "container_cmds",
        "top",
        _builder("container_cmds", "top_arguments"),
        "a container's processes",
    ),
    "stats": (
        "container_cmds",
        "stats",
        _builder("container_cmds", "stats_arguments"),
        "containers' resource usage",
    ),
    "rename": (
        "container_cmds",
        "rename",
        _builder("container_cmds", "rename_arguments"),
        "rename a container",
    ),
    "port": (
        "container_cmds",
        "port",
        _builder("container_cmds", "port_arguments"),
        "a container's published ports",
    ),
    "update": (
        "container_cmds",
        "update",
        _builder("container_cmds", "update_arguments"),
        "change containers' resource limits and restart policy",
    ),
    "container-prune": (
        "container_cmds",
        "container_prune",
        _builder("container_cmds", "prune_arguments"),
        "remove stopped containers",
    ),
    "volume-create": (
        "volume_cmds",
        "create",
        _builder("volume_cmds", "create_arguments"),
        "create a volume",
    ),
    "volume-ls": ("volume_cmds", "ls", _builder("volume_cmds", "ls_arguments"), "list volumes"),
    "volume-inspect": (
        "volume_cmds",
        "inspect",
        _builder("volume_cmds", "inspect_arguments"),
        "JSON of volumes",
    ),
    "volume-rm": ("volume_cmds", "rm", _builder("volume_cmds", "rm_arguments"), "remove volumes"),
    **{
        f"network-{verb}": (
            "network_cmds",
            verb,
            _builder("network_cmds", f"{verb}_arguments"),
            text,
        )
        for verb, text in (
            ("create", "create a network"),
            ("ls", "list networks"),
            ("inspect", "JSON of networks"),
            ("rm", "remove networks"),
            ("connect", "connect a container to a network"),
            ("disconnect", "disconnect a container from a network"),
            ("prune", "remove unused networks"),
        )
    },
}


def usage() -> str:
    lines = [
        "usage: berth [-H HOST] [--version] COMMAND [ARGS...]",
        "",
        "A container engine. Talks to berthd at $BERTH_HOST, $DOCKER_HOST or",
        "unix:///run/berth/berth.sock (-H/--host HOST to choose).",
        "",
        "commands:",
    ]
    for verb, (_, _, _, text) in VERBS.items():
        if verb != "bootstrap" and "-" not in verb:
            lines.append(f"  {verb:<10}{text}")
    lines += [
        "  image     images: ls, rm, pull, push, tag, inspect, save, load, import, history, prune,",
        "            bootstrap NAME (busybox)",
        "  container containers: ls, run, create, start, stop, rm, logs, exec, ...",
        "  system    df, prune, info, events, service (berthd in the foreground)",
        "  volume    create, ls, inspect, rm, prune",
        "  network   create, ls, inspect, rm, connect, disconnect, prune",
        "  runtime   the OCI runtime (the same as berth-runtime ARGS...)",
        "  registry  an OCI distribution registry: serve, gc",
        "",
        "Run 'berth COMMAND --help' for a command's options.",
    ]
    return "\n".join(lines) + "\n"


def _global_options(args: list[str]) -> tuple[str | None, bool, list[str]]:
    host = None
    debug = bool(os.environ.get("BERTH_DEBUG"))
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        if arg in ("-H", "--host"):
            if i + 1 >= len(args):
                raise UsageError(f"berth: {arg} needs a value (unix:///path or tcp://HOST:PORT)")
            host = args[i + 1]
            i += 2
        elif arg.startswith("--host="):
            host = arg.split("=", 1)[1]
            i += 1
        elif arg in ("-D", "--debug"):
            debug = True
            i += 1
        else:
            raise UsageError(f"berth: unknown flag {arg}; see 'berth --help'")
    return host, debug, args[i:]


def _resolve(args: list[str]) -> tuple[str, str, list[str]]:
    """(verb, prog name, its arguments) with the container/image groups folded in."""
    verb, rest = args[0], args[1:]
    if verb in GROUPS:
        group = GROUPS[verb]
        if not rest or rest[0] in ("-h", "--help"):
            names = ", ".join(sorted(group))
            print(f"usage: berth {verb} COMMAND\n\ncommands: {names}")
            raise SystemExit(0)
        if rest[0] not in group:
            raise UsageError(
                f"berth {verb}: unknown command {rest[0]!r}; see 'berth {verb} --help'"
            )
        prog = f"berth {verb} {rest[0]}"
        target = group[rest[0]]
        rest = rest[1:]
        if target == "inspect":
            rest = ["--type", verb, *rest]
        return target, prog, rest
    if verb not in VERBS or verb == "bootstrap" or "-" in verb:
        raise UsageError(f"berth: unknown command {verb!r}; see 'berth --help'")
    return verb, f"berth {verb}", rest


def main(args: list[str]) -> int:
    debug = bool(os.environ.get("BERTH_DEBUG"))
    try:
        host, debug, args = _global_options(args)
        if not args:
            print(usage(), end="")
            return 0
        verb, prog, rest = _resolve(args)
        module_name, function, builder, text = VERBS[verb]
        options = None
        if verb == "build":  # the usual arguments read without argparse; the rest by it
            from berth.cli.build_cmd import quick_arguments

            options = quick_arguments(rest)
        if options is None:
            # run and create: -h is --hostname, as in docker
            parser = _parser(prog, text, add_help=verb not in ("run", "create"))
            builder(parser)
            options = parser.parse_args(rest)
        return _call(module_name, function, host, options)
    except UsageError as exc:
        text = str(exc)
        print(text if text.startswith("berth") else f"berth: {text}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (berth ps | head -1): leave quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except SystemExit:
        raise
    except Exception as exc:
        from berth.errors import BerthError

        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(exc, BerthError):
            error(str(exc))
        else:
            error(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_ERROR


def _call(module_name: str, function: str, host: str | None, options: Any) -> int:
    # The CLI never speaks HTTPS to berthd: keep http.client from loading ssl (~6 ms).
    # build sends its context on a raw socket (Client.upload) and needs no http.client.
    blocked = "ssl" not in sys.modules and module_name != "build_cmd"
    if blocked:
        sys.modules["ssl"] = None  # type: ignore[assignment]
        try:
            import http.client  # noqa: F401
        finally:
            del sys.modules["ssl"]
    from berth.client.api import Client

    name = f"berth.cli.{module_name}"
    __import__(name)  # not importlib's import_module: importlib and warnings cost ~0.4 ms
    handler = getattr(sys.modules[name], function)
    client = Client(host)
    try:
        code: int = handler(client, options)
        return code
    finally:
        client.close()
