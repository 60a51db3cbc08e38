"""``berth-runtime``: runc's command line over berth.runtime.container.

Flags follow runc (urfave/cli), including Go's single-dash long flags
(``-bundle``), so containerd's shim, ``podman --runtime`` and ``ctr`` can drive it.
"""

from __future__ import annotations

import json
import os
import sys

from berth import __version__, log
from berth.errors import BerthError, ConfigError, InvalidArgument
from berth.runtime import spec
from berth.runtime.flags import BOOL, INT, LIST, VALUE, Flag, Namespace, Verb, parse, usage

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_BUNDLE_FLAGS = [
    Flag("bundle,b", VALUE, ".", "the bundle directory (default: the current one)"),
    Flag("console-socket", VALUE, None, "unix socket that receives the pty master"),
    Flag("pid-file", VALUE, None, "write the init's pid to this file"),
    Flag("no-pivot", BOOL, help="MS_MOVE and chroot instead of pivot_root"),
    Flag("no-new-keyring", BOOL, help="accepted; the session keyring is inherited"),
    Flag("preserve-fds", INT, 0, "pass this many extra fds, from 3 on"),
    Flag("help,h", BOOL),
]
GLOBAL_FLAGS = [
    Flag("root", VALUE, "/run/berth-runtime", "state directory"),
    Flag("log", VALUE, None, "log file (errors and warnings)"),
    Flag("log-format", VALUE, "text", "text or json"),
    Flag("debug", BOOL, help="debug output"),
    Flag("systemd-cgroup", BOOL, help="accepted; the cgroupfs driver is used"),
    Flag("criu", VALUE, None, "accepted, unused"),
    Flag("rootless", VALUE, None, "accepted, unused"),
    Flag("version,v", BOOL, help="print the version"),
    Flag("help,h", BOOL, help="this help"),
]
_HELP = Flag("help,h", BOOL)
VERBS = [
    Verb("create", "create a container that waits for start", _BUNDLE_FLAGS, "id"),
    Verb("start", "run the user process of a created container", [_HELP], "id"),
    Verb(
        "run",
        "create and start a container, and wait for it",
        [
            *_BUNDLE_FLAGS,
            Flag("detach,d", BOOL, help="do not wait"),
            Flag("keep", BOOL, help="do not delete the container when it exits"),
            Flag("no-subreaper", BOOL, help="accepted"),
        ],
        "id",
    ),
    Verb("state", "print the container's state as JSON", [_HELP], "id"),
    Verb(
        "kill",
        "send a signal (default SIGTERM) to the container",
        [Flag("all,a", BOOL, help="to every process of the container"), _HELP],
        "id signal?",
    ),
    Verb(
        "delete", "delete a container", [Flag("force,f", BOOL, help="kill it first"), _HELP], "id"
    ),
    Verb("pause", "freeze every process of the container", [_HELP], "id"),
    Verb("resume", "thaw a paused container", [_HELP], "id"),
    Verb(
        "list",
        "list containers",
        [Flag("format,f", VALUE, "table", "table or json"), Flag("quiet,q", BOOL), _HELP],
    ),
    Verb(
        "ps",
        "processes of a container (ps options may follow the id)",
        [Flag("format,f", VALUE, "table", "table or json"), _HELP],
        "id",
        rest="ps_args",
    ),
    Verb(
        "exec",
        "run a process in a running container",
        [
            Flag("console-socket", VALUE, None, "unix socket that receives the pty master"),
            Flag("cwd", VALUE, None, "working directory"),
            Flag("env,e", LIST, help="KEY=VALUE (repeatable)"),
            Flag("tty,t", BOOL, help="allocate a pty"),
            Flag("user,u", VALUE, None, "UID[:GID]"),
            Flag("additional-gids,g", LIST, help="extra group (repeatable)"),
            Flag("process,p", VALUE, None, "process.json instead of a command"),
            Flag("detach,d", BOOL, help="do not wait"),
            Flag("pid-file", VALUE, None, "write the process's pid to this file"),
            Flag("process-label", VALUE, None, "accepted, unused"),
            Flag("apparmor", VALUE, None, "accepted, unused"),
            Flag("no-new-privs", BOOL, help="set no_new_privs"),
            Flag("cap,c", LIST, help="add a capability (repeatable)"),
            Flag("preserve-fds", INT, 0, "pass this many extra fds"),
            Flag("ignore-paused", BOOL, help="accepted"),
            _HELP,
        ],
        "id",
        rest="command",
    ),
    Verb(
        "spec",
        "write runc's default config.json",
        [Flag("bundle,b", VALUE, ".", "where"), Flag("rootless", BOOL), _HELP],
    ),
    Verb("features", "print what this runtime supports (JSON)", [_HELP]),
]


def _exec_process(args: Namespace, config: dict[str, Any]) -> dict[str, Any]:
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


def _dispatch(args: Namespace) -> int:
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
        runtime.kill(args.id, parse_signal(args.signal or "SIGTERM"), all_processes=args.all)
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
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv, GLOBAL_FLAGS, VERBS)
    except BerthError as exc:
        print(f"berth-runtime: {exc}", file=sys.stderr)
        return 2
    if args.version:
        print(f"berth-runtime version {__version__}\nspec: {spec.OCI_VERSION}")
        return 0
    if args.help or not args.verb:
        out = sys.stdout if args.help else sys.stderr
        print(usage("berth-runtime", GLOBAL_FLAGS, VERBS, args.verb if args.help else None),
              end="", file=out)  # fmt: skip
        return 0 if args.help else 2
    if args.log_format not in {"text", "json"}:
        print(f"berth-runtime: --log-format {args.log_format!r}: use text or json", file=sys.stderr)
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
    except Exception as exc:  # a bug: still one line for the user, details with --debug
        if args.debug:
            import traceback

            traceback.print_exc()
        log.error(f"internal error: {type(exc).__name__}: {exc}")
        print(f"berth-runtime: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def entry() -> None:
    """The console script: flush, then leave without the interpreter's teardown,
    which costs 5-9 ms on every container start and frees nothing the exit would not."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 1
    os._exit(code)


if __name__ == "__main__":
    entry()
