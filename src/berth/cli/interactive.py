"""The verbs that stream: run, create, start -a, attach, exec, logs.

``run`` does what the docker CLI does, in its order: create (pulling a missing image),
register a wait, attach, start, then copy the container's output to stdout/stderr and
our stdin to the container (half-closing the socket at stdin's end) until the daemon
closes the stream; the exit code is the container's. Without a TTY, signals are passed
on to the container (sig-proxy); a third Ctrl-C leaves it running and returns.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from argparse import Namespace
from collections.abc import Callable
from typing import Any

from berth.cli.app import EXIT_ERROR, UsageError, error
from berth.client import Client, ClientError, HijackedStream, NotFoundError
from berth.client.errors import APIError

_PROXIED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)


# ---- the container config from run/create flags -------------------------------------------


def parse_bytes(text: str, flag: str) -> int:
    """docker's RAMInBytes: ``512m``, ``1g``, ``1.5GiB``, ``1024`` (binary units)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"invalid size for {flag}: {text!r} (use 512m, 1g, ...)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    return int(number * 1024 ** ("bkmgtp".index(unit) if unit else 0))


def _more_host_options(args: Namespace) -> dict[str, Any]:
    """--init, --runtime, --cpuset-*, --group-add, --pid/--ipc/--uts, --log-driver/-opt,
    --ulimit, --device, --shm-size as HostConfig fields (the daemon validates them)."""
    host: dict[str, Any] = {}
    if args.init:
        host["Init"] = True
    for flag, key in (
        ("runtime", "Runtime"),
        ("cpuset_cpus", "CpusetCpus"),
        ("cpuset_mems", "CpusetMems"),
        ("pid", "PidMode"),
        ("ipc", "IpcMode"),
        ("uts", "UTSMode"),
    ):
        if getattr(args, flag):
            host[key] = getattr(args, flag)
    if args.group_add:
        host["GroupAdd"] = args.group_add
    if args.log_driver or args.log_opt:
        options = {}
        for item in args.log_opt:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"invalid --log-opt {item!r}: use KEY=VALUE")
            options[key] = value
        host["LogConfig"] = {"Type": args.log_driver or "", "Config": options}
    ulimits = []
    for item in args.ulimit:
        name, sep, limits = item.partition("=")
        soft, _, hard = limits.partition(":")
        try:
            ulimits.append({"Name": name, "Soft": int(soft), "Hard": int(hard or soft)})
        except ValueError:
            raise UsageError(f"invalid --ulimit {item!r}: use NAME=SOFT[:HARD]") from None
        if not sep:
            raise UsageError(f"invalid --ulimit {item!r}: use NAME=SOFT[:HARD]")
    if ulimits:
        host["Ulimits"] = ulimits
    devices = []
    for item in args.device:
        parts = item.split(":")
        permissions = parts[-1] if len(parts) > 1 and set(parts[-1]) <= set("rwm") else "rwm"
        if len(parts) > 1 and parts[-1] == permissions:
            parts = parts[:-1]
        devices.append(
            {
                "PathOnHost": parts[0],
                "PathInContainer": parts[1] if len(parts) > 1 else parts[0],
                "CgroupPermissions": permissions,
            }
        )
    if devices:
        host["Devices"] = devices
    if args.shm_size:
        host["ShmSize"] = parse_bytes(args.shm_size, "--shm-size")
    return host


def _restart_policy(text: str) -> dict[str, Any]:
    name, _, count = text.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise UsageError(
            f"invalid restart policy {text!r}: use no, always, unless-stopped or on-failure[:N]"
        )
    if count and (name != "on-failure" or not count.isdigit()):
        raise UsageError(f"invalid restart policy {text!r}: only on-failure takes a count")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _env(args: Namespace) -> list[str]:
    items: list[str] = []
    for path in args.env_file:
        try:
            with open(path) as f:
                items += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise UsageError(f"cannot read env file {path}: {exc.strerror}") from None
    items += args.env
    env = []
    for item in items:
        if "=" in item:
            env.append(item)
        elif item in os.environ:  # -e NAME: the value from here, as docker does
            env.append(f"{item}={os.environ[item]}")
    return env


def container_config(args: Namespace, *, detach: bool) -> dict[str, Any]:
    """The create body (Docker's ``Config`` plus ``HostConfig``) from run/create flags."""
    if args.restart and args.restart != "no" and args.rm:
        raise UsageError("conflicting options: --restart and --rm")
    attach = not detach
    config: dict[str, Any] = {
        "Image": args.image,
        "Tty": args.tty,
        "OpenStdin": args.interactive,
        "StdinOnce": args.interactive and attach,
        "AttachStdin": args.interactive and attach,
        "AttachStdout": attach,
        "AttachStderr": attach,
    }
    if args.command:
        config["Cmd"] = args.command
    if args.entrypoint is not None:
        config["Entrypoint"] = [args.entrypoint]
    env = _env(args)
    if env:
        config["Env"] = env
    if args.label:
        config["Labels"] = {k: v for k, _, v in (item.partition("=") for item in args.label)}
    for key, value in (
        ("WorkingDir", args.workdir),
        ("User", args.user),
        ("Hostname", args.hostname),
        ("StopSignal", args.stop_signal),
        ("StopTimeout", args.stop_timeout),
    ):
        if value is not None:
            config[key] = value
    host: dict[str, Any] = {}
    binds = [v for v in args.volume if ":" in v]
    anonymous = [v for v in args.volume if ":" not in v]
    if anonymous:
        config["Volumes"] = {path: {} for path in anonymous}
    if binds:
        host["Binds"] = binds
    if args.rm:
        host["AutoRemove"] = True
    if args.network:
        host["NetworkMode"] = args.network
    from berth.cli.network_cmds import apply_run_options

    apply_run_options(args, config, host)
    if args.memory:
        host["Memory"] = parse_bytes(args.memory, "--memory")
    if args.memory_swap:
        swap = args.memory_swap.strip()
        host["MemorySwap"] = -1 if swap == "-1" else parse_bytes(swap, "--memory-swap")
    if args.pids_limit is not None:
        host["PidsLimit"] = args.pids_limit
    if args.cpus is not None:
        if args.cpus < 0:
            raise UsageError(f"invalid --cpus {args.cpus}: give a positive number")
        host["NanoCpus"] = int(args.cpus * 1e9)
    if args.cpu_shares is not None:
        host["CpuShares"] = args.cpu_shares
    if args.cap_add:
        host["CapAdd"] = args.cap_add
    if args.cap_drop:
        host["CapDrop"] = args.cap_drop
    if args.privileged:
        host["Privileged"] = True
    if args.read_only:
        host["ReadonlyRootfs"] = True
    if args.security_opt:
        host["SecurityOpt"] = args.security_opt
    if args.restart:
        host["RestartPolicy"] = _restart_policy(args.restart)
    host.update(_more_host_options(args))
    if host:
        config["HostConfig"] = host
    healthcheck = _healthcheck(args)
    if healthcheck is not None:
        config["Healthcheck"] = healthcheck
    return config


def _duration_ns(text: str | None, flag: str) -> int:
    """Go-style durations (``1m30s``, ``500ms``, ``2s``) in nanoseconds; 0 when unset."""
    if not text:
        return 0
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise UsageError(f"invalid {flag} {text!r}: give a duration such as 30s, 500ms, 1m30s")
    return int(sum(float(n) * units[u] for n, u in parts))


def _healthcheck(args: Namespace) -> dict[str, Any] | None:
    """The Healthcheck of ``--health-*`` and ``--no-healthcheck`` (None: the image's)."""
    if getattr(args, "no_healthcheck", False):
        if args.health_cmd:
            raise UsageError("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    check: dict[str, Any] = {}
    if getattr(args, "health_cmd", None):
        check["Test"] = ["CMD-SHELL", args.health_cmd]
    for key, flag in (
        ("Interval", "health_interval"),
        ("Timeout", "health_timeout"),
        ("StartPeriod", "health_start_period"),
        ("StartInterval", "health_start_interval"),
    ):
        value = _duration_ns(getattr(args, flag, None), "--" + flag.replace("_", "-"))
        if value:
            check[key] = value
    retries = getattr(args, "health_retries", None)
    if retries is not None:
        if retries < 0:
            raise UsageError("--health-retries cannot be negative")
        check["Retries"] = retries
    return check or None


def _create(client: Client, args: Namespace, config: dict[str, Any]) -> str:
    """Create, pulling the image first when it is missing (``--pull missing``)."""
    from berth.cli.commands import pull_image

    if args.pull == "always":
        pull_image(client, args.image, out=sys.stderr)
    try:
        created = client.create_container(config, args.name)
    except NotFoundError as exc:
        if args.pull == "never" or "no such image" not in str(exc).lower():
            raise
        print(f"Unable to find image '{args.image}' locally", file=sys.stderr, flush=True)
        try:
            pull_image(client, args.image, out=sys.stderr)
        except APIError as pull_error:
            hint = ""
            if args.image.split(":")[0] in ("busybox", "debian"):
                hint = f" (make it locally: berth image bootstrap {args.image})"
            raise APIError(pull_error.status, f"{pull_error}{hint}") from None
        created = client.create_container(config, args.name)
    for warning in created.get("Warnings") or []:
        print(f"WARNING: {warning}", file=sys.stderr)
    return str(created["Id"])


def start_failure_code(message: str) -> int:
    """docker run's codes for a start that failed: 127 no such command, 126 not runnable."""
    text = message.lower()
    if "executable file not found" in text or "no such file or directory" in text:
        return 127
    if "permission denied" in text:
        return 126
    return EXIT_ERROR


# ---- the session: streams, terminal, signals ------------------------------------------------


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Session:
    """Copies a hijacked stream to our stdout/stderr and our stdin to it."""

    def __init__(
        self,
        client: Client,
        stream: HijackedStream,
        *,
        tty: bool,
        stdin: bool,
        resize: Callable[[int, int], None] | None = None,
        proxy_to: str | None = None,
        detach_keys: bytes | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.detach_keys = detach_keys
        self.detached = False  # the detach sequence was sent: the daemon let go
        self.tty = tty
        self.stdin = stdin
        self.resize = resize
        self.proxy_to = proxy_to
        self._terminal: Any = None
        self._handlers: dict[int, Any] = {}
        self._interrupts = 0

    def _resize_now(self, *_: object) -> None:
        if self.resize is None:
            return
        try:
            size = os.get_terminal_size(sys.stdout.fileno())
            self.resize(size.lines, size.columns)
        except (OSError, ClientError):
            pass

    def _proxy(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts >= 3:
                print(
                    f"\nberth: left {self.proxy_to and self.proxy_to[:12]} running"
                    " (berth stop it, or berth attach to it)",
                    file=sys.stderr,
                )
                raise KeyboardInterrupt
        try:
            assert self.proxy_to is not None
            self.client.kill(self.proxy_to, signal.Signals(signum).name)
        except ClientError:
            pass

    def _pump_stdin(self) -> None:
        from berth.client.streams import DetachMatcher

        matcher = DetachMatcher(self.detach_keys) if self.detach_keys else None
        try:
            while data := os.read(0, 65536):
                hit = matcher is not None and matcher.feed(data)[1]
                if hit:  # known before the daemon can end the stream on the same keys
                    self.detached = True
                self.stream.send(data)
                if hit:
                    # As the docker CLI does, leave without waiting for the daemon to
                    # close its side: the keys are queued before the shutdown, so the
                    # daemon still detaches; the output loop sees the end and returns.
                    self.stream.shutdown()
                    return
        except OSError:
            pass
        finally:
            self.stream.close_stdin()

    def run(self) -> None:
        try:
            self._setup()
            write_out = sys.stdout.fileno()
            write_err = sys.stderr.fileno()
            sys.stdout.flush()
            for number, data in self.stream.frames():
                _write(write_err if number == 2 else write_out, data)
        finally:
            self._restore()
            self.stream.close()

    def _setup(self) -> None:
        if self.tty and self.stdin and os.isatty(0):
            import termios
            import tty

            self._terminal = termios.tcgetattr(0)
            # TCSANOW, not setraw's default TCSAFLUSH: keys typed (or pasted) before the
            # stream was ready must reach the container, detach keys included
            tty.setraw(0, termios.TCSANOW)
        if self.tty and self.resize is not None and os.isatty(sys.stdout.fileno()):
            self._resize_now()
            self._handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, self._resize_now)
        if not self.tty and self.proxy_to is not None:
            for name in _PROXIED:
                number = getattr(signal, name)
                self._handlers[number] = signal.signal(number, self._proxy)
        if self.stdin:
            import threading

            threading.Thread(target=self._pump_stdin, name="stdin", daemon=True).start()

    def _restore(self) -> None:
        if self._terminal is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, self._terminal)
            self._terminal = None
        for number, handler in self._handlers.items():
            signal.signal(number, handler)
        self._handlers.clear()


def attach_and_start(
    client: Client,
    container_id: str,
    *,
    tty: bool,
    stdin: bool,
    auto_remove: bool,
    detach_keys: str | None = None,
) -> int:
    """Wait registered, attached, started, streamed: the container's exit code (0 when
    the user detached with the detach sequence)."""
    from berth.client.streams import parse_detach_keys

    try:
        keys = parse_detach_keys(detach_keys)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    waiter = client.wait_later(container_id, "removed" if auto_remove else "next-exit")
    try:
        params: dict[str, Any] = {"stream": True, "stdin": stdin, "stdout": True, "stderr": True}
        if detach_keys:
            params["detachKeys"] = detach_keys
        stream = client.hijack(f"/containers/{container_id}/attach", params=params)
    except BaseException:
        waiter.close()
        raise
    try:
        client.start(container_id)
    except ClientError as exc:
        stream.close()
        waiter.close()
        if auto_remove:
            try:
                client.remove_container(container_id, force=True)
            except ClientError:
                pass
        error(str(exc))
        return start_failure_code(str(exc))
    session = Session(
        client,
        stream,
        tty=tty,
        stdin=stdin,
        resize=lambda h, w: client.resize(container_id, h, w),
        proxy_to=container_id,
        detach_keys=keys if stdin and tty else None,
    )
    try:
        session.run()
    except BaseException:
        waiter.close()
        raise
    if session.detached:
        waiter.close()
        return 0
    return waiter.result()


def _check_terminal(args: Namespace) -> None:
    if args.tty and args.interactive and not os.isatty(0):
        raise UsageError("the input device is not a TTY: drop -t, or run from a terminal")


def run(client: Client, args: Namespace) -> int:
    if not args.detach:
        _check_terminal(args)
    config = container_config(args, detach=args.detach)
    container_id = _create(client, args, config)
    if args.detach:
        try:
            client.start(container_id)
        except ClientError as exc:
            if args.rm:
                try:
                    client.remove_container(container_id, force=True)
                except ClientError:
                    pass
            error(str(exc))
            return start_failure_code(str(exc))
        print(container_id)
        return 0
    return attach_and_start(
        client,
        container_id,
        tty=args.tty,
        stdin=args.interactive,
        auto_remove=args.rm,
        detach_keys=args.detach_keys,
    )


def create(client: Client, args: Namespace) -> int:
    config = container_config(args, detach=False)
    print(_create(client, args, config))
    return 0


def start(client: Client, args: Namespace) -> int:
    if not (args.attach or args.interactive):
        from berth.cli.commands import each

        return each(args.containers, client.start)
    if len(args.containers) > 1:
        raise UsageError("berth start: you cannot start and attach multiple containers at once")
    info = client.inspect_container(args.containers[0])
    config = info.get("Config") or {}
    stdin = bool(args.interactive and config.get("OpenStdin"))
    if config.get("Tty") and stdin and not os.isatty(0):
        raise UsageError("the input device is not a TTY")
    return attach_and_start(
        client,
        info["Id"],
        tty=bool(config.get("Tty")),
        stdin=stdin,
        auto_remove=bool((info.get("HostConfig") or {}).get("AutoRemove")),
    )


def attach(client: Client, args: Namespace) -> int:
    info = client.inspect_container(args.container)
    if not (info.get("State") or {}).get("Running"):
        raise ClientError("you cannot attach to a stopped container, start it first")
    config = info.get("Config") or {}
    stdin = bool(config.get("OpenStdin")) and not args.no_stdin
    tty = bool(config.get("Tty"))
    keys = _detach_keys(args)
    params = {"stream": True, "stdin": stdin, "stdout": True, "stderr": True}
    if args.detach_keys:
        params["detachKeys"] = args.detach_keys
    stream = client.hijack(f"/containers/{info['Id']}/attach", params=params)
    session = Session(
        client,
        stream,
        tty=tty,
        stdin=stdin,
        resize=lambda h, w: client.resize(info["Id"], h, w),
        proxy_to=info["Id"],
        detach_keys=keys if stdin else None,
    )
    session.run()
    if session.detached:
        return 0
    return client.wait(info["Id"])


def _detach_keys(args: Namespace) -> bytes:
    from berth.client.streams import parse_detach_keys

    try:
        return parse_detach_keys(getattr(args, "detach_keys", None))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def exec_(client: Client, args: Namespace) -> int:
    if not args.command:
        raise UsageError("berth exec: give a command to run; see 'berth exec --help'")
    if not args.detach:
        _check_terminal(args)
    attach = not args.detach
    keys = _detach_keys(args)
    if args.detach_keys and attach:  # the daemon must know them: no client option for it
        body: dict[str, Any] = {
            "AttachStdin": args.interactive,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": args.tty,
            "Cmd": args.command,
            "Privileged": args.privileged,
            "Env": args.env or None,
            "WorkingDir": args.workdir,
            "User": args.user,
            "DetachKeys": args.detach_keys,
        }
        created = client.post(f"/containers/{args.container}/exec", body)
        exec_id = str(created["Id"])
    else:
        exec_id = _exec_create(client, args, attach)
    stream = client.exec_start(exec_id, tty=args.tty, detach=args.detach)
    if stream is None:
        return 0
    session = Session(
        client,
        stream,
        tty=args.tty,
        stdin=args.interactive,
        resize=lambda h, w: client.exec_resize(exec_id, h, w),
        detach_keys=keys if args.interactive else None,
    )
    session.run()
    if session.detached:
        return 0
    return client.exec_exit_code(exec_id)


def _exec_create(client: Client, args: Namespace, attach: bool) -> str:
    return client.exec_create(
        args.container,
        args.command,
        stdin=args.interactive and attach,
        stdout=attach,
        stderr=attach,
        tty=args.tty,
        env=args.env or None,
        workdir=args.workdir,
        user=args.user,
        privileged=args.privileged,
    )


def _when(text: str | None, flag: str) -> float | None:
    """``--since``/``--until``: seconds since the epoch, or a duration ago (10m, 2h, 30s)."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not match:
        raise UsageError(f"invalid {flag} {text!r}: give seconds since the epoch or 10s, 5m, 2h")
    number, unit = float(match.group(1)), match.group(2)
    if unit is None:
        return number
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return time.time() - number * scale


def logs(client: Client, args: Namespace) -> int:
    tail = args.tail
    if tail != "all" and not (tail.isdigit() or tail == "-1"):
        raise UsageError(f"invalid --tail {tail!r}: give a number of lines or all")
    out, err = sys.stdout.fileno(), sys.stderr.fileno()
    for number, data in client.logs(
        args.container,
        follow=args.follow,
        tail="all" if tail == "-1" else tail,
        timestamps=args.timestamps,
        since=_when(args.since, "--since"),
        until=_when(args.until, "--until"),
    ):
        _write(err if number == 2 else out, data)
    return 0
