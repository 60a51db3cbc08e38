"""``berth-runtime``: runc's command line over berth.runtime.container.

Flags follow runc (urfave/cli), including Go's single-dash long flags
(``-bundle``), so containerd's shim, ``podman --runtime`` and ``ctr`` can drive it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from berth import __version__
from berth.errors import BerthError, ConfigError, InvalidArgument
from berth.runtime import log, spec

_LONG_FLAGS = {
    "root", "log", "log-format", "debug", "systemd-cgroup", "criu", "rootless", "bundle",
    "console-socket", "pid-file", "no-pivot", "no-new-keyring", "preserve-fds", "detach",
    "keep", "no-subreaper", "all", "force", "format", "quiet", "cwd", "env", "tty", "user",
    "additional-gids", "process", "process-label", "apparmor", "no-new-privs", "cap",
    "ignore-paused", "help", "version",
}  # fmt: skip


def _normalise(argv: list[str]) -> list[str]:
    """Accept Go-style ``-flag`` for long flags, as runc does."""
    result = []
    for arg in argv:
        name = arg[1:].split("=", 1)[0]
        if arg.startswith("-") and not arg.startswith("--") and name in _LONG_FLAGS:
            arg = "-" + arg
        result.append(arg)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth-runtime", description="Berth's OCI runtime (runc-compatible command line)."
    )
    parser.add_argument("-v", "--version", action="store_true", help="print the version")
    parser.add_argument("--root", default="/run/berth-runtime", help="state directory")
    parser.add_argument("--log", default=None, help="log file (errors and warnings)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--systemd-cgroup", action="store_true", help="accepted; cgroupfs is used")
    parser.add_argument("--criu", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rootless", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")

    def bundle_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("-b", "--bundle", default=".", help="the bundle directory")
        p.add_argument("--console-socket", default=None)
        p.add_argument("--pid-file", default=None)
        p.add_argument("--no-pivot", action="store_true")
        p.add_argument("--no-new-keyring", action="store_true")
        p.add_argument("--preserve-fds", type=int, default=0)
        p.add_argument("id")

    bundle_opts(sub.add_parser("create", help="create a container"))
    p = sub.add_parser("run", help="create and start a container, and wait for it")
    bundle_opts(p)
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--no-subreaper", action="store_true")
    for name in ("start", "state", "pause", "resume"):
        sub.add_parser(name).add_argument("id")
    p = sub.add_parser("kill", help="send a signal to the container's init")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("id")
    p.add_argument("signal", nargs="?", default="SIGTERM")
    p = sub.add_parser("delete", help="delete a container")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("id")
    p = sub.add_parser("list", help="list containers")
    p.add_argument("-f", "--format", default="table", choices=["table", "json"])
    p.add_argument("-q", "--quiet", action="store_true")
    p = sub.add_parser("ps", help="processes of a container")
    p.add_argument("-f", "--format", default="table", choices=["table", "json"])
    p.add_argument("id")
    p.add_argument("ps_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("spec", help="write runc's default config.json")
    p.add_argument("-b", "--bundle", default=".")
    p.add_argument("--rootless", action="store_true")
    sub.add_parser("features", help="print what this runtime supports (JSON)")
    p = sub.add_parser("exec", help="run a process in a running container")
    p.add_argument("--console-socket", default=None)
    p.add_argument("--cwd", default=None)
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-u", "--user", default=None)
    p.add_argument("-g", "--additional-gids", action="append", default=[])
    p.add_argument("-p", "--process", default=None)
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--pid-file", default=None)
    p.add_argument("--process-label", default=None)
    p.add_argument("--apparmor", default=None)
    p.add_argument("--no-new-privs", action="store_true")
    p.add_argument("-c", "--cap", action="append", default=[])
    p.add_argument("--preserve-fds", type=int, default=0)
    p.add_argument("--ignore-paused", action="store_true")
    p.add_argument("id")
    p.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def _exec_process(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    if args.process:
        try:
            with open(args.process) as f:
                proc: dict[str, Any] = json.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read process file {args.process}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"malformed process file {args.process}: {exc}") from None
        return proc
    if not args.command:
        raise InvalidArgument("exec needs a command, or --process FILE")
    base = dict(config.get("process") or {})
    proc = {
        "args": list(args.command),
        "env": list(base.get("env") or []) + list(args.env),
        "cwd": args.cwd or base.get("cwd") or "/",
        "terminal": args.tty,
        "user": dict(base.get("user") or {"uid": 0, "gid": 0}),
        "capabilities": base.get("capabilities"),
        "noNewPrivileges": args.no_new_privs or bool(base.get("noNewPrivileges")),
        "rlimits": base.get("rlimits") or [],
    }
    if args.user:
        uid, _, gid = args.user.partition(":")
        try:
            proc["user"] = {"uid": int(uid), "gid": int(gid or 0)}
        except ValueError:
            raise InvalidArgument(f"--user {args.user!r}: give uid[:gid] as numbers") from None
    if args.additional_gids:
        proc["user"]["additionalGids"] = [int(g) for g in args.additional_gids]
    if args.cap and proc["capabilities"]:
        caps = {k: list(v) for k, v in proc["capabilities"].items()}
        for cap in args.cap:
            for field in ("bounding", "effective", "permitted", "ambient"):
                caps.setdefault(field, []).append(cap)
        proc["capabilities"] = caps
    return proc


def _features() -> dict[str, Any]:
    from berth.linux import capabilities, seccomp
    from berth.runtime.rootfs import _MOUNT_FLAGS, PROPAGATION_FLAGS

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": spec.OCI_VERSION,
        "hooks": [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ],
        "mountOptions": sorted(set(_MOUNT_FLAGS) | set(PROPAGATION_FLAGS)),
        "linux": {
            "namespaces": sorted(spec.NAMESPACE_FLAGS),
            "capabilities": sorted(capabilities.CAP_NAMES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {
                "enabled": True,
                "actions": list(seccomp.KNOWN_ACTIONS),
                "operators": list(seccomp.KNOWN_OPERATORS),
                "archs": list(seccomp.KNOWN_ARCHES),
                "knownFlags": list(seccomp.KNOWN_FLAGS),
                "supportedFlags": list(seccomp.KNOWN_FLAGS),
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"io.github.berth.runtime.version": __version__},
    }


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _dispatch(args: argparse.Namespace) -> int:
    from berth.runtime.container import Runtime, parse_signal

    runtime = Runtime(args.root)
    command = args.verb
    if command == "create":
        runtime.create(
            args.id,
            args.bundle,
            console_socket=args.console_socket,
            pid_file=args.pid_file,
            no_pivot=args.no_pivot,
            preserve_fds=args.preserve_fds,
        )
    elif command == "run":
        return runtime.run(
            args.id,
            args.bundle,
            console_socket=args.console_socket,
            pid_file=args.pid_file,
            no_pivot=args.no_pivot,
            preserve_fds=args.preserve_fds,
            detach=args.detach,
            keep=args.keep,
        )
    elif command == "start":
        runtime.start(args.id)
    elif command == "state":
        print(json.dumps(runtime.state_json(args.id), indent=2))
    elif command == "kill":
        runtime.kill(args.id, parse_signal(args.signal), all_processes=args.all)
    elif command == "delete":
        runtime.delete(args.id, force=args.force)
    elif command == "pause":
        runtime.pause(args.id)
    elif command == "resume":
        runtime.resume(args.id)
    elif command == "list":
        items = runtime.containers()
        if args.quiet:
            for item in items:
                print(item["id"])
        elif args.format == "json":
            print(json.dumps(items))
        else:
            rows = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]]
            for it in items:
                rows.append(
                    [
                        it["id"],
                        str(it["pid"]),
                        it["status"],
                        it["bundle"],
                        it["created"],
                        it["owner"],
                    ]
                )
            _print_table(rows)
    elif command == "ps":
        pids = runtime.pids(args.id)
        if args.format == "json":
            print(json.dumps(pids))
        else:
            _print_ps(pids, args.ps_args or ["-ef"])
    elif command == "spec":
        path = os.path.join(args.bundle, "config.json")
        if os.path.exists(path):
            raise ConfigError(f"{path} already exists: remove it first")
        with open(path, "w") as f:
            json.dump(spec.default_spec(args.rootless), f, indent="\t")
    elif command == "features":
        print(json.dumps(_features(), indent=2))
    elif command == "exec":
        state = runtime.store.load(args.id)
        proc = _exec_process(args, state.config)
        return runtime.exec(
            args.id,
            proc,
            console_socket=args.console_socket,
            pid_file=args.pid_file,
            detach=args.detach,
            preserve_fds=args.preserve_fds,
        )
    return 0


def _print_ps(pids: list[int], ps_args: list[str]) -> None:
    import subprocess

    try:
        output = subprocess.run(
            ["ps", *ps_args], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise InvalidArgument(f"ps {' '.join(ps_args)} failed: {exc}") from None
    header, rows = output[0], output[1:]
    try:
        pid_column = header.split().index("PID")
    except ValueError:
        raise InvalidArgument("ps output has no PID column") from None
    print(header)
    wanted = set(pids)
    for row in rows:
        fields = row.split()
        if (
            len(fields) > pid_column
            and fields[pid_column].isdigit()
            and int(fields[pid_column]) in wanted
        ):
            print(row)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_normalise(sys.argv[1:] if argv is None else argv))
    if args.version:
        print(f"berth-runtime version {__version__}\nspec: {spec.OCI_VERSION}")
        return 0
    if not args.verb:
        _parser().print_usage(sys.stderr)
        return 2
    log.configure(args.log, args.log_format, args.debug)
    try:
        return _dispatch(args)
    except BerthError as exc:
        log.error(str(exc))
        print(f"berth-runtime: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
