"""berth-runtime as a library: create, start, run, exec, kill, pause, delete.

The runtime process never unshares anything itself. ``create`` forks a child
(stage 1) that joins the cgroup and the namespaces; stage 1 forks the container's
init (pid 1 of a new pid namespace), which builds the rootfs, pivots, drops its
privileges and then blocks opening the exec fifo for writing. ``start`` opens the
fifo for reading, which lets the init exec the user's program. Parent and children
talk over a SOCK_SEQPACKET pair: JSON messages, plus the pty master as SCM_RIGHTS.

Because the whole config is already parsed in the forking process, the children
need no re-exec and no IPC of the spec: this is what makes a start cheap when the
runtime is used from a warm process (see DESIGN.md).
"""

from __future__ import annotations

import _socket  # socket.py pulls in selectors and enum: milliseconds per start
import array
import json
import os
import signal
import time

from berth import log
from berth.errors import BerthError, ConfigError, Conflict, InvalidArgument, SystemFailure
from berth.linux import syscalls as sc
from berth.runtime import hooks, process, spec
from berth.runtime.state import (
    DEFAULT_ROOT,
    ContainerState,
    StateStore,
    init_alive,
    process_start_time,
)

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

CREATED, RUNNING, PAUSED, STOPPED = "created", "running", "paused", "stopped"
_USERNS_WRITE_ORDER = ("uid_map", "gid_map")


def _send(sock: _socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode()
    if fds:
        sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def _recv(sock: _socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(65536, _socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


def preload_for_child(config: dict[str, Any], proc: dict[str, Any] | None = None) -> None:
    """Import now what the children use after pivot_root, when the host's Python
    library and shared objects are out of their reach."""
    import select  # noqa: F401  (console proxy, fifo wait)

    if log.debugging():
        import traceback  # noqa: F401  (debug reports from children)

    from berth.linux import capabilities, execstub  # noqa: F401
    from berth.runtime import rootfs  # noqa: F401

    proc = proc or config.get("process") or {}
    seccomp_config = (config.get("linux") or {}).get("seccomp")
    if seccomp_config:
        from berth.linux import seccomp

        seccomp.preload()
        seccomp.precompile(seccomp_config)  # once per profile in a warm process
    if proc.get("terminal"):
        import tty  # noqa: F401

        from berth.runtime import console  # noqa: F401
    if config.get("hooks"):
        import subprocess  # noqa: F401


def _child_fail(sock: _socket.socket, exc: BaseException) -> NoReturn:
    """Report an error from a forked child to the parent and leave, never returning.

    After the init has told the parent it is ready, the parent may be gone: then the
    message goes to the container's stderr.
    """
    try:
        if log.debugging():
            import traceback

            log.debug("".join(traceback.format_exception(exc)))
        if isinstance(exc, BerthError):
            message = str(exc)
        elif isinstance(exc, OSError):
            message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            if exc.args and isinstance(exc.args[-1], str) and ":" in exc.args[-1]:
                message = exc.args[-1]
        else:
            message = f"{type(exc).__name__}: {exc}"
        try:
            _send(sock, {"t": "error", "msg": message})
        except OSError:
            os.write(2, f"berth-runtime: {message}\n".encode())
    finally:
        os._exit(1)


def _write_file(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def parse_signal(value: str) -> int:
    text = value.strip().upper()
    if text.isdigit():
        number = int(text)
        if 0 < number < 65:
            return number
        raise InvalidArgument(f"invalid signal {value!r}")
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text.startswith("SIGRTMIN+") or text.startswith("SIGRTMAX-"):
        base, _, offset = text.partition("+" if "+" in text else "-")
        rt = signal.SIGRTMIN if base == "SIGRTMIN" else signal.SIGRTMAX
        return int(rt + int(offset)) if "+" in text else int(rt - int(offset))
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise InvalidArgument(f"unknown signal {value!r}") from None


class Started:
    """What create/exec hand back: the process and, for foreground terminals, its pty."""

    def __init__(self, pid: int, console_master: int | None = None) -> None:
        self.pid = pid
        self.console_master = console_master


class Runtime:
    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.store = StateStore(root)

    # ---- status -------------------------------------------------------------------

    def status(self, state: ContainerState) -> str:
        if not init_alive(state):
            return STOPPED
        if os.path.exists(self.store.fifo(state.id)):
            return CREATED
        if state.cgroup_paths and self._cgroup(state).is_frozen():
            return PAUSED
        return RUNNING

    def _cgroup(self, state: ContainerState) -> Any:
        from berth.linux.cgroups import Cgroup

        return Cgroup.from_paths(state.cgroup_paths)

    def state_json(self, container_id: str) -> dict[str, Any]:
        state = self.store.load(container_id)
        status = self.status(state)
        result: dict[str, Any] = {
            "ociVersion": spec.OCI_VERSION,
            "id": state.id,
            "pid": state.pid if status != STOPPED else 0,
            "status": status,
            "bundle": state.bundle,
            "rootfs": state.rootfs,
            "created": state.created,
            "owner": state.owner,
        }
        if state.annotations:
            result["annotations"] = state.annotations
        return result

    def containers(self) -> list[dict[str, Any]]:
        result = []
        for container_id in self.store.ids():
            try:
                result.append(self.state_json(container_id))
            except BerthError:
                continue
        return result

    # ---- create ---------------------------------------------------------------------

    def create(
        self,
        container_id: str,
        bundle: str,
        *,
        console_socket: str | None = None,
        pid_file: str | None = None,
        no_pivot: bool = False,
        preserve_fds: int = 0,
        keep_console: bool = False,
    ) -> Started:
        """Create a container whose init waits for ``start``.

        ``keep_console``: for a terminal container with no console socket, hand the
        pty master back to the caller (``run`` in the foreground proxies it).
        """
        # Ctrl-C or SIGTERM in the middle would leave half a container: hold them
        # until create has finished (or cleaned up), then let them act.
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            return self._create(
                container_id,
                bundle,
                console_socket=console_socket,
                pid_file=pid_file,
                no_pivot=no_pivot,
                preserve_fds=preserve_fds,
                keep_console=keep_console,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _create(
        self,
        container_id: str,
        bundle: str,
        *,
        console_socket: str | None,
        pid_file: str | None,
        no_pivot: bool,
        preserve_fds: int,
        keep_console: bool,
    ) -> Started:
        from berth.linux import cgroups

        cgroups.warm_up()
        spec.validate_id(container_id)
        bundle = os.path.abspath(bundle)
        config = spec.load(bundle)
        spec.validate(config, bundle)
        proc = config["process"]
        if proc.get("terminal") and not console_socket and not keep_console:
            raise ConfigError(
                "process.terminal is true: pass --console-socket, or set terminal to false"
            )
        if console_socket and not proc.get("terminal"):
            raise ConfigError("--console-socket needs process.terminal set to true")
        rootfs = spec.rootfs_path(config, bundle)
        namespaces = spec.namespaces(config)
        self.store.reserve(container_id)
        cgroup = None
        child_pid = 0
        try:
            linux = config.get("linux") or {}
            cgroup = cgroups.Cgroup.for_container(linux.get("cgroupsPath"), container_id)
            cgroup.create()
            cgroup.apply(_with_default_devices(linux))
            state = ContainerState(
                id=container_id,
                bundle=bundle,
                rootfs=rootfs,
                created=time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
                owner="",
                annotations=config.get("annotations") or {},
                cgroup_paths=cgroup.paths(),
                config=config,
            )
            fifo = self.store.fifo(container_id)
            os.mkfifo(fifo, 0o622)
            os.chmod(fifo, 0o622)
            root_uid, root_gid = _host_ids_of_root(linux)
            if (root_uid, root_gid) != (0, 0):
                os.chown(fifo, root_uid, root_gid)
            fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
            init = _InitContext(
                config=config,
                rootfs=rootfs,
                namespaces=namespaces,
                cgroup=cgroup,
                cgroup_mode=cgroups.detect_mode(),
                fifo_fd=fifo_fd,
                no_pivot=no_pivot,
                preserve_fds=preserve_fds,
                state=state,
            )
            preload_for_child(config)
            parent_sock, child_sock = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            child_pid = os.fork()
            if child_pid == 0:
                parent_sock.close()
                init.stage1(child_sock)
            child_sock.close()
            os.close(fifo_fd)
            try:
                started = self._follow_create(parent_sock, child_pid, init, console_socket)
            finally:
                parent_sock.close()
            if pid_file:
                _write_pid_file(pid_file, started.pid)
            return started
        except BaseException:
            if child_pid:
                _reap_quietly(child_pid)
            self._cleanup_failed(container_id, cgroup, config, rootfs)
            raise

    def _follow_create(
        self,
        sock: _socket.socket,
        child_pid: int,
        init: _InitContext,
        console_socket: str | None,
    ) -> Started:
        state = init.state
        console_master: int | None = None
        stage1_reaped = ready = False
        while True:
            message, fds = _recv(sock)
            if message is None:
                raise SystemFailure("the container's init exited during create")
            kind = message["t"]
            if kind == "error":
                raise BerthError(message["msg"])
            if kind == "idmap":
                _write_id_maps(child_pid, init.config.get("linux") or {})
                _send(sock, {"t": "ok"})
            elif kind == "pid":
                state.pid = int(message["pid"])
                state.pid_start = process_start_time(state.pid) or 0
                os.waitpid(child_pid, 0)
                stage1_reaped = True
                self.store.save(state)
                if not init.joins_cgroup_itself:
                    # The init builds its rootfs meanwhile: a cgroup v1 join can cost
                    # an RCU grace period (~15 ms), so it overlaps with that work.
                    init.cgroup.join(state.pid)
            elif kind == "console":
                master = fds[0]
                if console_socket:
                    from berth.runtime import console

                    try:
                        console.send_to_console_socket(console_socket, master)
                    except OSError as exc:
                        raise SystemFailure(
                            f"cannot send the console to {console_socket}: {exc.strerror}"
                        ) from None
                    finally:
                        os.close(master)
                else:
                    console_master = master
            elif kind == "hooks":
                payload = hooks.state_payload(
                    state.id, CREATED, state.pid, state.bundle, state.annotations
                )
                hooks.run(init.config, "prestart", payload)
                hooks.run(init.config, "createRuntime", payload)
                _send(sock, {"t": "ok"})
            elif kind == "ready":
                ready = True
            if ready and stage1_reaped:
                return Started(state.pid, console_master)

    def _cleanup_failed(
        self, container_id: str, cgroup: Any, config: Any = None, rootfs: str = ""
    ) -> None:
        if cgroup is not None:
            try:
                cgroup.kill_all(signal.SIGKILL)
                _wait_cgroup_empty(cgroup.paths())
                cgroup.destroy()
            except BerthError as exc:
                log.warning(f"cleanup of {container_id}: {exc}")
        if config is not None:
            _detach_host_rootfs(config, rootfs)
        self.store.remove(container_id)

    # ---- start / run ----------------------------------------------------------------

    def start(self, container_id: str) -> None:
        state = self.store.load(container_id)
        status = self.status(state)
        if status != CREATED:
            raise Conflict(f"cannot start container {container_id!r}: it is {status}, not created")
        fifo = self.store.fifo(container_id)
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise Conflict(f"cannot start container {container_id!r}: already started") from None
        try:
            data = _read_fifo(fd, state)
        finally:
            os.close(fd)
        try:
            os.unlink(fifo)
        except FileNotFoundError:
            pass
        if not data:
            raise SystemFailure(f"container {container_id!r}: its init exited before start")
        payload = hooks.state_payload(state.id, RUNNING, state.pid, state.bundle, state.annotations)
        hooks.run(state.config, "poststart", payload)

    def run(
        self,
        container_id: str,
        bundle: str,
        *,
        console_socket: str | None = None,
        pid_file: str | None = None,
        no_pivot: bool = False,
        preserve_fds: int = 0,
        detach: bool = False,
        keep: bool = False,
    ) -> int:
        """create + start, then (unless detached) wait and delete; returns the exit code."""
        if not detach:
            sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        started = self.create(
            container_id,
            bundle,
            console_socket=console_socket,
            pid_file=pid_file,
            no_pivot=no_pivot,
            preserve_fds=preserve_fds,
            keep_console=not detach,
        )
        try:
            self.start(container_id)
        except BaseException:
            self.delete(container_id, force=True)
            raise
        if detach:
            return 0
        try:
            return wait_foreground(started)
        finally:
            if not keep:
                self.delete(container_id, force=True)

    # ---- signals, pause, delete -------------------------------------------------------

    def kill(self, container_id: str, sig: int, all_processes: bool = False) -> None:
        state = self.store.load(container_id)
        status = self.status(state)
        if status == STOPPED:
            raise Conflict(f"container {container_id!r} is not running")
        if all_processes and state.cgroup_paths:
            self._cgroup(state).kill_all(sig)
        else:
            try:
                os.kill(state.pid, sig)
            except ProcessLookupError:
                raise Conflict(f"container {container_id!r} is not running") from None
        if status == PAUSED and sig == signal.SIGKILL:
            self._cgroup(state).thaw()

    def pause(self, container_id: str) -> None:
        state = self.store.load(container_id)
        status = self.status(state)
        if status not in (RUNNING, CREATED):
            raise Conflict(f"cannot pause container {container_id!r}: it is {status}")
        self._cgroup(state).freeze()

    def resume(self, container_id: str) -> None:
        state = self.store.load(container_id)
        status = self.status(state)
        if status != PAUSED:
            raise Conflict(f"cannot resume container {container_id!r}: it is {status}, not paused")
        self._cgroup(state).thaw()

    def delete(self, container_id: str, force: bool = False) -> None:
        state = self.store.load(container_id)
        status = self.status(state)
        if status in (RUNNING, PAUSED) and not force:
            raise Conflict(
                f"cannot delete container {container_id!r} that is not stopped: it is {status}"
                " (stop it first, or use --force)"
            )
        cgroup = self._cgroup(state) if state.cgroup_paths else None
        if status != STOPPED:
            try:
                os.kill(state.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # When the init of a pid namespace dies the kernel kills the rest of it, so a
        # stopped container with its own pid namespace needs no cgroup-wide kill.
        own_pid_ns = spec.namespaces(state.config).get("pid", "") is None
        if cgroup is not None:
            if status != STOPPED or not own_pid_ns:
                cgroup.kill_all(signal.SIGKILL)
            if status == PAUSED:
                cgroup.thaw()
            _wait_cgroup_empty(state.cgroup_paths)
        _wait_dead(state)
        if cgroup is not None:
            cgroup.destroy()
        _detach_host_rootfs(state.config, state.rootfs)
        self.store.remove(container_id)
        payload = hooks.state_payload(state.id, STOPPED, 0, state.bundle, state.annotations)
        hooks.run(state.config, "poststop", payload)

    def pids(self, container_id: str) -> list[int]:
        state = self.store.load(container_id)
        if not state.cgroup_paths:
            return [state.pid] if init_alive(state) else []
        return sorted(self._cgroup(state).pids())

    # ---- exec -----------------------------------------------------------------------

    def exec(
        self,
        container_id: str,
        proc: dict[str, Any],
        *,
        console_socket: str | None = None,
        pid_file: str | None = None,
        detach: bool = False,
        preserve_fds: int = 0,
    ) -> int:
        """Run another process in a running container; returns its exit code."""
        if proc.get("terminal") and not console_socket and detach:
            raise ConfigError("a detached exec with a terminal needs --console-socket")
        if not detach:
            sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        started = self.exec_start(
            container_id, proc, console_socket=console_socket, preserve_fds=preserve_fds
        )
        if pid_file:
            _write_pid_file(pid_file, started.pid)
        if detach:
            return 0
        return wait_foreground(started)

    def exec_start(
        self,
        container_id: str,
        proc: dict[str, Any],
        *,
        console_socket: str | None = None,
        preserve_fds: int = 0,
    ) -> Started:
        """Start another process in a running container and return at once: its pid
        and, for a terminal with no console socket, the pty master. The process
        inherits the caller's fds 0-2; the caller reaps it (as a child subreaper)."""
        state = self.store.load(container_id)
        if state.cgroup_paths:
            from berth.linux import cgroups

            cgroups.warm_up()
        status = self.status(state)
        if status not in (RUNNING, CREATED):
            raise Conflict(f"cannot exec in container {container_id!r}: it is {status}")
        spec.validate_process(proc)
        spec.check_security_labels(proc, {})
        ctx = _ExecContext(state, proc, preserve_fds)
        preload_for_child(state.config, proc)
        parent_sock, child_sock = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        child_pid = os.fork()
        if child_pid == 0:
            parent_sock.close()
            ctx.stage1(child_sock)
        child_sock.close()
        pid = 0
        ready = False
        master: int | None = None
        try:
            while not (ready and pid):
                message, fds = _recv(parent_sock)
                if message is None:
                    raise SystemFailure("the exec process exited before it started")
                if message["t"] == "error":
                    raise BerthError(message["msg"])
                if message["t"] == "pid":
                    pid = int(message["pid"])
                    os.waitpid(child_pid, 0)
                    child_pid = 0
                    if state.cgroup_paths:
                        # overlaps with the process's own set-up, as in create
                        self._cgroup(state).join(pid)
                elif message["t"] == "console":
                    if console_socket:
                        from berth.runtime import console

                        console.send_to_console_socket(console_socket, fds[0])
                        os.close(fds[0])
                    else:
                        master = fds[0]
                elif message["t"] == "ready":
                    ready = True
            _send(parent_sock, {"t": "go"})
        except BaseException:
            if child_pid:
                _reap_quietly(child_pid)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise
        finally:
            parent_sock.close()
        return Started(pid, master)


def wait_foreground(started: Started) -> int:
    """Forward signals to the process, proxy its pty, reap it; 128+N for signal N."""
    forwarded = [
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
    ]

    def forward(signum: int, _frame: Any) -> None:
        if signum == signal.SIGWINCH and started.console_master is not None:
            from berth.runtime import console

            try:
                rows, cols = os.get_terminal_size(0)
                console.set_size(started.console_master, rows, cols)
            except OSError:
                pass
            return
        try:
            os.kill(started.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        if started.console_master is not None:
            from berth.runtime import console

            pidfd = sc.pidfd_open(started.pid)
            try:
                console.proxy(started.console_master, pidfd)
            finally:
                os.close(pidfd)
                os.close(started.console_master)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == started.pid:
                return _exit_code(status)
    except ChildProcessError:
        return 255
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _reap_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _read_fifo(fd: int, state: ContainerState) -> bytes:
    """Wait for the init's byte, giving up if the init dies meanwhile."""
    import select

    deadline = time.monotonic() + 10
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            data = os.read(fd, 1)
            if data or not init_alive(state):
                return data
        elif not init_alive(state):
            return b""
        if time.monotonic() > deadline:
            raise SystemFailure(f"container {state.id!r}: its init did not answer the start")


def _cgroup_has_processes(paths: dict[str, str]) -> bool:
    """Whether any process is left, from one hierarchy: they all hold the same ones."""
    directory = paths.get("pids") or paths.get("freezer") or next(iter(paths.values()))
    try:
        with open(os.path.join(directory, "cgroup.procs"), "rb") as f:
            return bool(f.read().strip())
    except FileNotFoundError:
        return False


def _wait_cgroup_empty(paths: dict[str, str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _cgroup_has_processes(paths):
        if time.monotonic() > deadline:
            raise SystemFailure("processes of the container did not exit after SIGKILL")
        time.sleep(0.002)


def _wait_dead(state: ContainerState, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while init_alive(state):
        if time.monotonic() > deadline:
            raise SystemFailure(f"the init of {state.id!r} did not exit after SIGKILL")
        time.sleep(0.002)


# Devices every container may use, whatever its device rules say (runc's list).
_ALLOWED_DEVICES = [
    ("c", None, None, "m"),
    ("b", None, None, "m"),
    ("c", 1, 3, "rwm"),
    ("c", 1, 5, "rwm"),
    ("c", 1, 7, "rwm"),
    ("c", 1, 8, "rwm"),
    ("c", 1, 9, "rwm"),
    ("c", 5, 0, "rwm"),
    ("c", 5, 1, "rwm"),
    ("c", 5, 2, "rwm"),
    ("c", 136, None, "rwm"),
    ("c", 10, 200, "rwm"),
]


def _detach_host_rootfs(config: dict[str, Any], rootfs: str) -> None:
    """Without a mount namespace the init mounted in the host's: undo that."""
    if "mount" in spec.namespaces(config) or not rootfs:
        return
    try:
        sc.umount2(rootfs, sc.MNT_DETACH)
    except OSError:
        pass  # not mounted: the init failed before its bind mount


def _with_default_devices(linux: dict[str, Any]) -> dict[str, Any]:
    """The spec's resources with runc's default device rules and linux.devices allowed."""
    resources = dict(linux.get("resources") or {})
    rules = list(resources.get("devices") or [])
    for kind, major, minor, access in _ALLOWED_DEVICES:
        rules.append(
            {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
        )
    for dev in linux.get("devices") or []:
        kind = dev.get("type", "c")
        if kind == "p":
            continue  # a FIFO: the devices cgroup knows only a, b and c
        rules.append(
            {
                "allow": True,
                "type": "c" if kind == "u" else kind,
                "major": dev.get("major"),
                "minor": dev.get("minor"),
                "access": "rwm",
            }
        )
    resources["devices"] = rules
    return resources


def _host_ids_of_root(linux: dict[str, Any]) -> tuple[int, int]:
    def host_id(mappings: list[dict[str, Any]]) -> int:
        for m in mappings or []:
            if int(m.get("containerID", 0)) == 0:
                return int(m.get("hostID", 0))
        return 0

    return host_id(linux.get("uidMappings") or []), host_id(linux.get("gidMappings") or [])


def _write_id_maps(pid: int, linux: dict[str, Any]) -> None:
    for name, key in (("uid_map", "uidMappings"), ("gid_map", "gidMappings")):
        lines = "".join(
            f"{int(m['containerID'])} {int(m['hostID'])} {int(m['size'])}\n"
            for m in linux.get(key) or []
        )
        try:
            _write_file(f"/proc/{pid}/{name}", lines)
        except OSError as exc:
            raise SystemFailure(f"cannot write {name} {lines.strip()!r}: {exc.strerror}") from None


class _InitContext:
    """Everything the forked children need, captured before the fork."""

    def __init__(
        self,
        *,
        config: dict[str, Any],
        rootfs: str,
        namespaces: dict[str, str | None],
        cgroup: Any,
        cgroup_mode: str,
        fifo_fd: int,
        no_pivot: bool,
        preserve_fds: int,
        state: ContainerState,
    ) -> None:
        self.config = config
        self.rootfs = rootfs
        self.namespaces = namespaces
        self.cgroup = cgroup
        self.cgroup_mode = cgroup_mode
        self.fifo_fd = fifo_fd
        self.no_pivot = no_pivot
        self.preserve_fds = preserve_fds
        self.state = state
        # A new cgroup namespace is rooted where its creator is: then stage 1 must be
        # in the container's cgroup before it unshares. Otherwise the parent moves the
        # init in while the init works (see Runtime._follow_create).
        self.joins_cgroup_itself = namespaces.get("cgroup", "") is None

    def stage1(self, sock: _socket.socket) -> NoReturn:
        try:
            if self.joins_cgroup_itself:
                self.cgroup.join(0)
            join_namespaces(self.namespaces)
            new = {k for k, path in self.namespaces.items() if path is None}
            if "user" in new:
                sc.unshare(sc.CLONE_NEWUSER)
                _send(sock, {"t": "idmap"})
                reply, _ = _recv(sock)
                if not reply or reply.get("t") != "ok":
                    os._exit(1)
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
            flags = 0
            for kind in new - {"user"}:
                flags |= spec.NAMESPACE_FLAGS[kind]
            if flags:
                sc.unshare(flags)
            pid = os.fork()
            if pid == 0:
                self.init(sock)
            _send(sock, {"t": "pid", "pid": pid})
            os._exit(0)
        except BaseException as exc:
            _child_fail(sock, exc)

    def init(self, sock: _socket.socket) -> NoReturn:
        try:
            self._init(sock)
        except BaseException as exc:
            _child_fail(sock, exc)

    def _init(self, sock: _socket.socket) -> NoReturn:
        from berth.runtime.rootfs import RootfsBuilder

        os.setsid()
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        process.reset_signals()
        config = self.config
        proc = config["process"]
        linux = config.get("linux") or {}
        builder = RootfsBuilder(
            self.rootfs,
            config,
            cgroup_paths=self.cgroup.paths(),
            cgroup_mode=self.cgroup_mode,
            in_userns="user" in self.namespaces,
            mount_ns="mount" in self.namespaces,
        )
        builder.prepare()
        slave = self._console(sock, proc)
        hooks_config = config.get("hooks") or {}
        if hooks_config.get("prestart") or hooks_config.get("createRuntime"):
            _send(sock, {"t": "hooks"})
            reply, _ = _recv(sock)
            if not reply or reply.get("t") != "ok":
                os._exit(1)
        state = self.state
        payload = hooks.state_payload(
            state.id, CREATED, os.getpid(), state.bundle, state.annotations
        )
        hooks.run(config, "createContainer", payload)
        builder.pivot(self.no_pivot)
        for key, value in (linux.get("sysctl") or {}).items():
            _write_file("/proc/sys/" + key.replace(".", "/"), value)
        builder.finish()
        if config.get("hostname") and "uts" in self.namespaces:
            sc.sethostname(config["hostname"])
        if config.get("domainname") and "uts" in self.namespaces:
            sc.setdomainname(config["domainname"])
        env = process.build_env(proc)
        cwd = proc.get("cwd") or "/"
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
        if slave is not None:
            from berth.runtime import console

            console.make_controlling(slave)
            os.close(slave)
        path = process.resolve_executable(proc["args"], env)
        process.apply_rlimits(proc.get("rlimits") or [])
        if "oomScoreAdj" in proc:
            process.set_oom_score_adj(int(proc["oomScoreAdj"]))
        stub = process.stub_fd()
        process.finalize(proc, linux.get("seccomp"))
        process.prepare_exec_fds(self.preserve_fds)
        _send(sock, {"t": "ready"})
        fifo = os.open(f"/proc/self/fd/{self.fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fifo, b"0")
        hooks.run(config, "startContainer", payload)
        process.exec_process(path, proc["args"], env, stub)
        os._exit(127)

    def _console(self, sock: _socket.socket, proc: dict[str, Any]) -> int | None:
        if not proc.get("terminal"):
            return None
        from berth.runtime import console
        from berth.runtime.rootfs import _ensure_file

        devpts = os.path.join(self.rootfs, "dev/pts")
        if os.path.exists(os.path.join(devpts, "ptmx")):
            master, slave, _name = console.open_pty_in(devpts)
        else:
            master, slave = os.openpty()
        size = proc.get("consoleSize") or {}
        if size:
            console.set_size(slave, int(size.get("height", 0)), int(size.get("width", 0)))
        dev_console = os.path.join(self.rootfs, "dev/console")
        _ensure_file(dev_console)
        sc.mount(f"/proc/self/fd/{slave}", dev_console, None, sc.MS_BIND)
        _send(sock, {"t": "console"}, (master,))
        os.close(master)
        return slave


def join_namespaces(namespaces: dict[str, str | None], *, skip: tuple[str, ...] = ()) -> None:
    """setns into every namespace given by path: user first, mount last."""
    order = ["user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount"]
    fds = []
    try:
        for kind in order:
            path = namespaces.get(kind)
            if path and kind not in skip:
                try:
                    fds.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
                except OSError as exc:
                    raise ConfigError(
                        f"cannot open {kind} namespace {path}: {exc.strerror}"
                    ) from None
        for kind, fd in fds:
            try:
                sc.setns(fd, spec.NAMESPACE_FLAGS[kind])
            except OSError as exc:
                raise SystemFailure(f"cannot join {kind} namespace: {exc.strerror}") from None
    finally:
        for _, fd in fds:
            os.close(fd)


class _ExecContext:
    """A process joining a running container: its namespaces, cgroup and limits."""

    def __init__(self, state: ContainerState, proc: dict[str, Any], preserve_fds: int) -> None:
        self.state = state
        self.proc = proc
        self.preserve_fds = preserve_fds

    def stage1(self, sock: _socket.socket) -> NoReturn:
        try:
            ours = spec.namespaces(self.state.config)
            targets: dict[str, str | None] = {}
            for kind in ours:
                proc_name = spec.NAMESPACE_PROC_NAMES[kind]
                target = f"/proc/{self.state.pid}/ns/{proc_name}"
                if os.readlink(target) != os.readlink(f"/proc/self/ns/{proc_name}"):
                    targets[kind] = target
            join_namespaces(targets)
            if "mount" not in ours:
                os.chroot(f"/proc/{self.state.pid}/root")
            pid = os.fork()
            if pid == 0:
                self.run(sock)
            _send(sock, {"t": "pid", "pid": pid})
            os._exit(0)
        except BaseException as exc:
            _child_fail(sock, exc)

    def run(self, sock: _socket.socket) -> NoReturn:
        try:
            proc = self.proc
            os.setsid()
            sc.prctl(sc.PR_SET_DUMPABLE, 0)
            process.reset_signals()
            if proc.get("terminal"):
                from berth.runtime import console

                master, slave, _ = console.open_pty_in("/dev/pts")
                size = proc.get("consoleSize") or {}
                if size:
                    console.set_size(slave, int(size.get("height", 0)), int(size.get("width", 0)))
                _send(sock, {"t": "console"}, (master,))
                os.close(master)
                console.make_controlling(slave)
                os.close(slave)
            env = process.build_env(proc)
            os.chdir(proc.get("cwd") or "/")
            path = process.resolve_executable(proc["args"], env)
            process.apply_rlimits(proc.get("rlimits") or [])
            stub = process.stub_fd()
            linux = self.state.config.get("linux") or {}
            process.finalize(proc, linux.get("seccomp"))
            process.prepare_exec_fds(self.preserve_fds)
            _send(sock, {"t": "ready"})
            go, _ = _recv(sock)  # the parent has moved us into the cgroup
            if not go or go.get("t") != "go":
                os._exit(1)
            process.exec_process(path, proc["args"], env, stub)
            os._exit(127)
        except BaseException as exc:
            _child_fail(sock, exc)
