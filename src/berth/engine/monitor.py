"""berth's container monitor: the parent of every container init, separate from berthd.

``python -m berth.engine.monitor --exec-root /run/berth`` runs one small,
single-threaded process, in its own session, so that containers outlive the daemon:

* it is a child subreaper and uses :class:`berth.runtime.container.Runtime` as a
  library to create and start containers (no interpreter start per container);
* it holds each container's stdout/stderr pipes (or pty master) and stdin, writes
  the json-file log (rotated) and copies output to attached clients;
* it reaps the inits, writes each exit (code, time) atomically to the file the
  daemon named, deletes the runtime's container (cgroup, state) and tells the
  daemon over its event stream.

The daemon speaks to it over ``<exec-root>/monitor.sock``: one JSON object per line,
one answer line ``{"ok": true, ...}`` or ``{"ok": false, "kind": "NotFound",
"error": "..."}``. Two requests turn the connection into a stream after the answer:
``attach`` (container output as Docker frames, stdin the other way), ``exec`` (the
same for a process it starts in a running container with ``Runtime.exec_start``) and
``events`` (one JSON line per exit, ``exit`` or ``exec-exit``). No asyncio, no
aiohttp: the process stays small so that its forks stay cheap.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import signal
import socket as _socket
import struct
import sys
import time

from berth.engine.jsonlog import JsonLogWriter, rfc3339nano
from berth.errors import BerthError, Conflict, NotFound, SystemFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from berth.runtime.container import Runtime, Started

SOCKET_NAME = "monitor.sock"
PIDFILE_NAME = "monitor.pid"
# After the init is reaped, output still in the pipes is read for at most this long.
DRAIN_SECONDS = 2.0
# An attached client that falls this far behind is dropped rather than buffered.
MAX_CLIENT_BUFFER = 16 * 1024 * 1024
STDOUT, STDERR = 1, 2


def _log(message: str) -> None:
    sys.stderr.write(f"{rfc3339nano()} berth-monitor: {message}\n")
    sys.stderr.flush()


def frame(stream: int, data: bytes) -> bytes:
    """Docker's multiplexed stream frame: [stream, 0, 0, 0, size (big-endian u32)] + data."""
    return struct.pack(">BxxxL", stream, len(data)) + data


def write_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


class Conn:
    """One connection from the daemon: commands, then maybe an attach or event stream."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = bytearray()
        self.mode = "command"
        self.container_id = ""
        self.streams: set[int] = set()
        self.stdin = False
        self.close_stdin = False
        self.closing = False  # close once outbuf is written
        self.read_eof = False
        self.early_input = bytearray()
        self.registered = False

    def fileno(self) -> int:
        return self.sock.fileno()


class Container:
    """A container's init, or (``exec_of`` set) a process exec'd into a container."""

    def __init__(self, container_id: str, pid: int, tty: bool, log: JsonLogWriter | None) -> None:
        self.id = container_id
        self.exec_of = ""
        self.pid = pid
        self.tty = tty
        self.log = log
        self.outputs: dict[int, int] = {}  # fd -> stream
        self.stdin_fd = -1
        self.stdin_buf = bytearray()
        self.stdin_close_pending = False
        self.attached: list[Conn] = []
        self.exit_code: int | None = None
        self.exited_ns = 0
        self.exit_file = ""
        self.finished = ""
        self.runtime: Backend | None = None

    def runtime_kill(self, sig: int) -> None:
        assert self.runtime is not None
        self.runtime.kill(self.id, sig)


BUILTIN_RUNTIME = "berth-runtime"


class BuiltinRuntime:
    """berth-runtime as a library: a start forks from this warm process (no interpreter
    start per container). Same operations as :class:`CliRuntime`."""

    name = BUILTIN_RUNTIME

    def __init__(self, root: str) -> None:
        from berth.runtime.container import Runtime

        self.lib: Runtime = Runtime(root)

    def create(self, container_id: str, bundle: str, tty: bool) -> Started:
        return self.lib.create(container_id, bundle, keep_console=tty)

    def start(self, container_id: str) -> None:
        self.lib.start(container_id)

    def kill(self, container_id: str, sig: int) -> None:
        self.lib.kill(container_id, sig)

    def pause(self, container_id: str) -> None:
        self.lib.pause(container_id)

    def resume(self, container_id: str) -> None:
        self.lib.resume(container_id)

    def delete(self, container_id: str) -> None:
        self.lib.delete(container_id, force=True)

    def cgroup_paths(self, container_id: str) -> dict[str, str]:
        return dict(self.lib.store.load(container_id).cgroup_paths)

    def exec_start(self, container_id: str, process: dict[str, Any]) -> Started:
        return self.lib.exec_start(container_id, process)

    def update(self, container_id: str, resources: dict[str, Any]) -> None:
        from berth.linux.cgroups import Cgroup

        Cgroup.from_paths(self.cgroup_paths(container_id)).apply(resources)


class CliRuntime:
    """A runtime binary with runc's command line (runc, crun, berth-runtime itself):
    ``create --pid-file --console-socket``, ``start``, ``kill``, ``delete --force``,
    ``pause``, ``resume``, ``exec --detach --process``, ``update -r``. The inits and
    exec'd processes it leaves behind are reparented to the monitor (a subreaper)."""

    def __init__(self, name: str, path: str, root: str) -> None:
        self.name = name
        self.path = path
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)
        self.log = os.path.join(root, "runtime.log")

    def _run(self, args: list[str], *, inherit: bool = False) -> str:
        """Run one verb; ``inherit``: the runtime passes the monitor's fds 0-2 (the
        container's pipes) to the process it starts. An error is its last log line."""
        import subprocess

        with open(self.log, "w"):
            pass
        command = [self.path, "--root", self.root, "--log", self.log, "--log-format", "json"]
        try:
            result = subprocess.run(
                [*command, *args],
                stdin=None if inherit else subprocess.DEVNULL,
                stdout=None if inherit else subprocess.PIPE,
                stderr=None if inherit else subprocess.PIPE,
                check=False,
                close_fds=True,
            )
        except OSError as exc:
            raise SystemFailure(
                f"cannot run the runtime {self.name} ({self.path}): {exc}"
            ) from None
        if result.returncode == 0:
            return (result.stdout or b"").decode(errors="replace")
        message = self._last_error() or (result.stderr or b"").decode(errors="replace").strip()
        message = message or f"{self.name} {args[0]} failed with exit code {result.returncode}"
        lowered = message.lower()
        if "does not exist" in lowered or "container not found" in lowered:
            raise NotFound(f"{self.name}: {message}")
        if "not running" in lowered or "not paused" in lowered or "is paused" in lowered:
            raise Conflict(f"{self.name}: {message}")
        raise SystemFailure(f"{self.name} {args[0]}: {message}")

    def _last_error(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                if line.strip():
                    return line.strip()
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
                return str(entry.get("msg") or "")
        return ""

    def _with_console(self, args: list[str], run: Callable[[list[str]], object]) -> int:
        """Run with ``--console-socket`` and return the pty master it sent us."""
        import array
        import tempfile

        folder = tempfile.mkdtemp(prefix="console-", dir=self.root)
        path = os.path.join(folder, "sock")
        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(1)
            run([*args, "--console-socket", path])
            listener.settimeout(5)
            conn, _ = listener.accept()
            with conn:
                fds = array.array("i")
                _, ancdata, _, _ = conn.recvmsg(4096, _socket.CMSG_SPACE(fds.itemsize))
                for level, kind, data in ancdata:
                    if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            if not fds:
                raise SystemFailure(f"{self.name} sent no terminal on the console socket")
            return int(fds[0])
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    def _pid_file(self, path: str) -> int:
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            raise SystemFailure(f"{self.name} wrote no pid file") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def create(self, container_id: str, bundle: str, tty: bool) -> Started:
        from berth.runtime.container import Started as _Started

        pid_file = os.path.join(bundle, "init.pid")
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        master = None
        if tty:
            master = self._with_console(args, lambda a: self._run([*a, container_id]))
        else:
            self._run([*args, container_id], inherit=True)
        return _Started(self._pid_file(pid_file), master)

    def start(self, container_id: str) -> None:
        self._run(["start", container_id])

    def kill(self, container_id: str, sig: int) -> None:
        self._run(["kill", container_id, str(sig)])

    def pause(self, container_id: str) -> None:
        self._run(["pause", container_id])

    def resume(self, container_id: str) -> None:
        self._run(["resume", container_id])

    def delete(self, container_id: str) -> None:
        self._run(["delete", "--force", container_id])

    def cgroup_paths(self, container_id: str) -> dict[str, str]:
        from berth.linux.cgroups import Cgroup

        return Cgroup.for_container(f"/berth/{container_id}", container_id).paths()

    def exec_start(self, container_id: str, process: dict[str, Any]) -> Started:
        from berth.runtime.container import Started as _Started

        process_file = os.path.join(self.root, f"exec-{os.getpid()}-{time.monotonic_ns()}.json")
        pid_file = process_file[:-5] + ".pid"
        with open(process_file, "w") as f:
            json.dump(process, f)
        args = ["exec", "--detach", "--pid-file", pid_file, "--process", process_file]
        try:
            master = None
            if process.get("terminal"):
                master = self._with_console(args, lambda a: self._run([*a, container_id]))
            else:
                self._run([*args, container_id], inherit=True)
            return _Started(self._pid_file(pid_file), master)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(process_file)

    def update(self, container_id: str, resources: dict[str, Any]) -> None:
        path = os.path.join(self.root, f"update-{container_id}.json")
        with open(path, "w") as f:
            json.dump(resources, f)
        try:
            self._run(["update", "--resources", path, container_id])
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)


Backend = BuiltinRuntime | CliRuntime


class Monitor:
    def __init__(self, exec_root: str) -> None:
        self.exec_root = exec_root
        self.runtime = BuiltinRuntime(os.path.join(exec_root, "runtime"))
        self.runtimes: dict[tuple[str, str], Backend] = {}
        self.selector = selectors.DefaultSelector()
        self.containers: dict[str, Container] = {}
        self.execs: dict[str, Container] = {}  # by exec id
        self.by_pid: dict[int, Container] = {}
        self.by_fd: dict[int, Container] = {}
        self.pending: dict[str, list[Conn]] = {}  # attach before start
        self.events: list[Conn] = []
        self.stopping = False

    # ---- set-up -----------------------------------------------------------------------

    def serve(self) -> None:
        from berth.linux import syscalls as sc

        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        os.makedirs(self.exec_root, mode=0o711, exist_ok=True)
        path = os.path.join(self.exec_root, SOCKET_NAME)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(64)
        listener.setblocking(False)
        wake_r, wake_w = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.selector.register(listener, selectors.EVENT_READ, ("listen", listener))
        self.selector.register(wake_r, selectors.EVENT_READ, ("wake", wake_r))
        pidfile = os.path.join(self.exec_root, PIDFILE_NAME)
        write_pid = f"{pidfile}.tmp"
        with open(write_pid, "w") as f:
            f.write(str(os.getpid()))
        os.rename(write_pid, pidfile)
        _log(f"serving on {path}")
        try:
            while not self.stopping:
                self._tick()
        finally:
            _log("stopping")
            for name in (path, pidfile):
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass

    def _on_term(self, *_: object) -> None:
        # The containers go on; they lose their log writer (documented in daemon.md).
        self.stopping = True

    def _tick(self) -> None:
        procs = [*self.containers.values(), *self.execs.values()]
        timeout = 1.0 if any(c.exit_code is not None for c in procs) else None
        for key, mask in self.selector.select(timeout if timeout is not None else 5.0):
            kind, obj = key.data
            try:
                if kind == "listen":
                    self._accept(obj)
                elif kind == "wake":
                    try:
                        while obj.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                elif kind == "output":
                    self._read_output(key.fd)
                elif kind == "stdin":
                    self._write_stdin(obj)
                elif kind == "conn":
                    if mask & selectors.EVENT_READ:
                        self._read_conn(obj)
                    if mask & selectors.EVENT_WRITE and obj.sock.fileno() >= 0:
                        self._flush_conn(obj)
            except Exception as exc:  # one bad peer must not end the monitor
                _log(f"error handling {kind}: {type(exc).__name__}: {exc}")
        self._reap()
        now = time.monotonic_ns()
        for container in [*self.containers.values(), *self.execs.values()]:
            if container.exit_code is not None and (
                not container.outputs or now - container.exited_ns > DRAIN_SECONDS * 1e9
            ):
                self._finish(container)

    # ---- connections ------------------------------------------------------------------

    def _accept(self, listener: _socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            conn = Conn(sock)
            self._update_interest(conn)

    def _read_conn(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if conn.mode == "attach":
            self._attach_input(conn, data)
            return
        if not data:
            self._drop(conn)
            return
        conn.inbuf += data
        while conn.mode == "command" and b"\n" in conn.inbuf:
            line, _, conn.inbuf = conn.inbuf.partition(b"\n")
            self._command(conn, line)
        if conn.mode == "attach" and conn.inbuf:
            rest, conn.inbuf = conn.inbuf, b""
            self._attach_input(conn, rest)

    def _send(self, conn: Conn, data: bytes) -> None:
        if conn.sock.fileno() < 0:
            return
        if len(conn.outbuf) > MAX_CLIENT_BUFFER:
            _log(f"dropping a client of {conn.container_id[:12]} that does not read")
            self._drop(conn)
            return
        conn.outbuf += data
        self._flush_conn(conn)

    def _flush_conn(self, conn: Conn) -> None:
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(conn)
            return
        if conn.closing and not conn.outbuf:
            self._drop(conn)
            return
        self._update_interest(conn)

    def _update_interest(self, conn: Conn) -> None:
        events = (0 if conn.read_eof else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if conn.outbuf else 0
        )
        registered = conn.registered
        if events and registered:
            self.selector.modify(conn.sock, events, ("conn", conn))
        elif events:
            self.selector.register(conn.sock, events, ("conn", conn))
            conn.registered = True
        elif registered:
            self.selector.unregister(conn.sock)
            conn.registered = False

    def _drop(self, conn: Conn) -> None:
        if conn.sock.fileno() < 0:
            return
        if conn.registered:
            self.selector.unregister(conn.sock)
            conn.registered = False
        conn.sock.close()
        if conn in self.events:
            self.events.remove(conn)
        waiting = self.pending.get(conn.container_id)
        if waiting and conn in waiting:
            waiting.remove(conn)
        container = self._proc(conn.container_id)
        if container and conn in container.attached:
            container.attached.remove(conn)
            if conn.stdin and conn.close_stdin:
                self._close_stdin(container)

    def _reply(self, conn: Conn, answer: dict[str, Any]) -> None:
        self._send(conn, json.dumps(answer).encode() + b"\n")

    def _command(self, conn: Conn, line: bytes) -> None:
        try:
            request = json.loads(line)
            op = request.get("op")
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise BerthError(f"unknown monitor operation {op!r}")
            answer = handler(conn, request) or {}
            self._reply(conn, {"ok": True, **answer})
        except BerthError as exc:
            self._reply(conn, {"ok": False, "kind": type(exc).__name__, "error": str(exc)})
        except Exception as exc:
            _log(f"{type(exc).__name__} in {line[:200]!r}: {exc}")
            self._reply(conn, {"ok": False, "kind": "SystemFailure", "error": str(exc)})

    def _proc(self, some_id: str) -> Container | None:
        """A container by id, or an exec by its exec id."""
        return self.containers.get(some_id) or self.execs.get(some_id)

    # ---- operations ---------------------------------------------------------------------

    def op_ping(self, conn: Conn, request: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def op_list(self, conn: Conn, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "containers": {
                c.id: {"pid": c.pid, "exited": c.exit_code is not None}
                for c in self.containers.values()
            }
        }

    def op_events(self, conn: Conn, request: dict[str, Any]) -> None:
        conn.mode = "events"
        self.events.append(conn)

    def op_attach(self, conn: Conn, request: dict[str, Any]) -> None:
        conn.mode = "attach"
        conn.container_id = request["id"]
        conn.streams = {STDOUT} if request.get("stdout", True) else set()
        if request.get("stderr", True):
            conn.streams.add(STDERR)
        conn.stdin = bool(request.get("stdin"))
        conn.close_stdin = bool(request.get("close_stdin"))
        container = self.containers.get(conn.container_id)
        if container is not None and container.exit_code is None:
            container.attached.append(conn)
        else:
            self.pending.setdefault(conn.container_id, []).append(conn)

    def _backend(self, request: dict[str, Any]) -> Backend:
        """The runtime a start names (``{"name", "path"}``); berth-runtime by default,
        in process unless another binary is named for it."""
        given = request.get("runtime") or {}
        name = str(given.get("name") or BUILTIN_RUNTIME)
        path = str(given.get("path") or name)
        if name == BUILTIN_RUNTIME and path in (BUILTIN_RUNTIME, ""):
            return self.runtime
        key = (name, path)
        if key not in self.runtimes:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            root = os.path.join(self.exec_root, "runtimes", safe)
            self.runtimes[key] = CliRuntime(name, path, root)
        return self.runtimes[key]

    def _runtime_of(self, container_id: str) -> Backend:
        container = self.containers.get(container_id)
        if container is not None and container.runtime is not None:
            return container.runtime
        return self.runtime

    def op_start(self, conn: Conn, request: dict[str, Any]) -> dict[str, Any]:
        container_id = request["id"]
        if container_id in self.containers:
            raise Conflict(f"container {container_id} is already running")
        runtime = self._backend(request)
        try:  # the runtime's record of an earlier run, if any
            runtime.delete(container_id)
        except BerthError:
            pass
        tty = bool(request.get("tty"))
        open_stdin = bool(request.get("stdin"))
        log = (
            JsonLogWriter(
                request["log_path"],
                int(request.get("log_max_size", 0)),
                int(request.get("log_max_files", 1)),
            )
            if request.get("log_path")
            else None
        )
        outputs: dict[int, int] = {}
        stdin_fd = -1
        try:
            if tty:
                started = runtime.create(container_id, request["bundle"], True)
                assert started.console_master is not None
                master = started.console_master
                os.set_blocking(master, False)
                outputs[master] = STDOUT
                stdin_fd = os.dup(master) if open_stdin else -1
                if stdin_fd >= 0:
                    os.set_blocking(stdin_fd, False)
            else:
                started, outputs, stdin_fd = self._with_pipes(
                    open_stdin, lambda: runtime.create(container_id, request["bundle"], False)
                )
        except BaseException:
            if log is not None:
                log.close()
            self._drop_pending(container_id)
            raise
        container = Container(container_id, started.pid, tty, log)
        container.runtime = runtime
        container.outputs = outputs
        container.stdin_fd = stdin_fd
        container.exit_file = request["exit_file"]
        try:
            if request.get("loopback_up"):
                _loopback_up(started.pid)
            runtime.start(container_id)
        except BaseException:
            for fd in [*outputs, stdin_fd]:
                if fd >= 0:
                    os.close(fd)
            if log is not None:
                log.close()
            try:
                runtime.delete(container_id)
            except BerthError:
                pass
            self._reap()
            self._drop_pending(container_id)
            raise
        self.containers[container_id] = container
        self.by_pid[started.pid] = container
        for fd in outputs:
            self.by_fd[fd] = container
            self.selector.register(fd, selectors.EVENT_READ, ("output", container))
        for waiting in self.pending.pop(container_id, []):
            container.attached.append(waiting)
            if waiting.stdin and waiting.early_input:
                container.stdin_buf += waiting.early_input
                waiting.early_input = bytearray()
                self._write_stdin(container)
            if waiting.stdin and waiting.read_eof and waiting.close_stdin:
                self._close_stdin(container)
        return {"pid": started.pid}

    def _drop_pending(self, container_id: str) -> None:
        """A start failed: clients attached for it are let go (docker run waits on them)."""
        for waiting in self.pending.pop(container_id, []):
            waiting.closing = True
            self._flush_conn(waiting)

    def _with_pipes(
        self, open_stdin: bool, make: Callable[[], Started]
    ) -> tuple[Started, dict[int, int], int]:
        """Run ``make`` (a create or an exec) with new pipes on fds 0-2, which its
        process inherits; our ends: {fd: stream} of the outputs, and stdin (or -1)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if open_stdin:
            in_r, in_w = os.pipe()
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        saved = [os.dup(0), os.dup(1), os.dup(2)]
        try:
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            started = make()
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for target, fd in enumerate(saved):
                os.dup2(fd, target)
                os.close(fd)
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        for fd in (out_r, err_r, in_w):
            if fd >= 0:
                os.set_blocking(fd, False)
        return started, {out_r: STDOUT, err_r: STDERR}, in_w

    def op_kill(self, conn: Conn, request: dict[str, Any]) -> None:
        container = self.containers.get(request["id"])
        if container is None or container.exit_code is not None:
            raise Conflict(f"container {request['id']} is not running")
        container.runtime_kill(int(request.get("signal", signal.SIGKILL)))
        if request.get("resume"):  # stop of a paused container: let it act on the signal
            try:
                self._runtime_of(request["id"]).resume(request["id"])
            except (Conflict, SystemFailure):
                pass

    def op_resize(self, conn: Conn, request: dict[str, Any]) -> None:
        container = self.containers.get(request["id"])
        if container is None or not container.tty:
            return
        from berth.runtime import console

        fd = next(iter(container.outputs), -1)
        if fd >= 0:
            console.set_size(fd, int(request.get("h", 24)), int(request.get("w", 80)))

    def op_exec(self, conn: Conn, request: dict[str, Any]) -> dict[str, Any]:
        """Start ``process`` (an OCI process) in a running container. Unless detached,
        the connection then streams like an attach of the exec (``exec_id``)."""
        container_id, exec_id = request["id"], request["exec_id"]
        runtime = self._running(container_id).runtime or self.runtime
        if exec_id in self.execs:
            raise Conflict(f"exec {exec_id} is already running")
        proc_config = request["process"]
        tty = bool(proc_config.get("terminal"))
        detach = bool(request.get("detach"))
        open_stdin = bool(request.get("stdin")) and not detach
        outputs: dict[int, int] = {}
        stdin_fd = -1
        if tty:
            started = runtime.exec_start(container_id, proc_config)
            assert started.console_master is not None
            master = started.console_master
            os.set_blocking(master, False)
            outputs[master] = STDOUT
            if open_stdin:
                stdin_fd = os.dup(master)
                os.set_blocking(stdin_fd, False)
        else:
            started, outputs, stdin_fd = self._with_pipes(
                open_stdin, lambda: runtime.exec_start(container_id, proc_config)
            )
        proc = Container(exec_id, started.pid, tty, None)
        proc.exec_of = container_id
        proc.outputs = outputs
        proc.stdin_fd = stdin_fd
        self.execs[exec_id] = proc
        self.by_pid[started.pid] = proc
        for fd in outputs:
            self.by_fd[fd] = proc
            self.selector.register(fd, selectors.EVENT_READ, ("output", proc))
        if not detach:
            conn.mode = "attach"
            conn.container_id = exec_id
            conn.streams = {STDOUT} if request.get("stdout", True) else set()
            if request.get("stderr", True):
                conn.streams.add(STDERR)
            conn.stdin = open_stdin
            conn.close_stdin = True
            proc.attached.append(conn)
        return {"pid": started.pid}

    def op_exec_resize(self, conn: Conn, request: dict[str, Any]) -> None:
        proc = self.execs.get(request["exec_id"])
        if proc is None or not proc.tty:
            return
        from berth.runtime import console

        fd = next(iter(proc.outputs), -1)
        if fd >= 0:
            console.set_size(fd, int(request.get("h", 24)), int(request.get("w", 80)))

    def _running(self, container_id: str) -> Container:
        container = self.containers.get(container_id)
        if container is None or container.exit_code is not None:
            raise Conflict(f"container {container_id} is not running")
        return container

    def op_pause(self, conn: Conn, request: dict[str, Any]) -> None:
        self._runtime_of(self._running(request["id"]).id).pause(request["id"])

    def op_resume(self, conn: Conn, request: dict[str, Any]) -> None:
        self._runtime_of(self._running(request["id"]).id).resume(request["id"])

    def op_pids(self, conn: Conn, request: dict[str, Any]) -> dict[str, Any]:
        from berth.linux.cgroups import Cgroup

        container = self._running(request["id"])
        paths = self._runtime_of(container.id).cgroup_paths(container.id)
        if not paths:
            return {"pids": [container.pid]}
        return {"pids": sorted(Cgroup.from_paths(paths).pids())}

    def op_cgroup(self, conn: Conn, request: dict[str, Any]) -> dict[str, Any]:
        """The container's cgroup directories, by controller (for stats)."""
        container = self._running(request["id"])
        paths = self._runtime_of(container.id).cgroup_paths(container.id)
        return {"paths": paths, "pid": container.pid}

    def op_update(self, conn: Conn, request: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources`` to a running container's cgroup."""
        container = self._running(request["id"])
        self._runtime_of(container.id).update(container.id, dict(request.get("resources") or {}))

    def op_shutdown(self, conn: Conn, request: dict[str, Any]) -> None:
        """Stop serving (tests; upgrades). Refused while containers run unless forced."""
        if self.containers and not request.get("force"):
            raise Conflict(f"{len(self.containers)} container(s) still run under this monitor")
        self.stopping = True

    # ---- container I/O --------------------------------------------------------------------

    def _read_output(self, fd: int) -> None:
        container = self.by_fd.get(fd)
        if container is None:
            return
        stream = container.outputs[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the pty's last slave is closed
                _log(f"reading {container.id[:12]}: {exc}")
            data = b""
        if not data:
            self._close_output(container, fd)
            return
        if container.log is not None:
            container.log.write("stdout" if stream == STDOUT else "stderr", data)
        chunk = data if container.tty else frame(stream, data)
        for conn in list(container.attached):
            if stream in conn.streams:
                self._send(conn, chunk)

    def _close_output(self, container: Container, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass
        container.outputs.pop(fd, None)
        self.by_fd.pop(fd, None)
        os.close(fd)

    def _attach_input(self, conn: Conn, data: bytes) -> None:
        container = self._proc(conn.container_id)
        if container is not None and conn not in container.attached:
            container = None  # attached for the next start, not this run
        if not data:  # the client closed its side (stdin at EOF): output still flows
            conn.read_eof = True
            self._update_interest(conn)
            if container is not None and conn.stdin and conn.close_stdin:
                self._close_stdin(container)
            return
        if not conn.stdin:
            return
        if container is None:  # stdin sent before the start: kept for it
            conn.early_input += data
            return
        if container.stdin_fd < 0:
            return
        container.stdin_buf += data
        self._write_stdin(container)

    def _write_stdin(self, container: Container) -> None:
        fd = container.stdin_fd
        if fd < 0:
            return
        try:
            while container.stdin_buf:
                written = os.write(fd, container.stdin_buf)
                del container.stdin_buf[:written]
        except BlockingIOError:
            pass
        except OSError:  # the container closed its stdin
            container.stdin_buf.clear()
        registered = fd in self.selector.get_map()
        if container.stdin_buf and not registered:
            self.selector.register(fd, selectors.EVENT_WRITE, ("stdin", container))
        elif not container.stdin_buf:
            if registered:
                self.selector.unregister(fd)
            if container.stdin_close_pending:
                self._close_stdin(container)

    def _close_stdin(self, container: Container) -> None:
        if container.stdin_fd < 0:
            return
        if container.stdin_buf:
            container.stdin_close_pending = True
            return
        if container.stdin_fd in self.selector.get_map():
            self.selector.unregister(container.stdin_fd)
        if container.tty:
            try:
                os.write(container.stdin_fd, b"\x04")  # end of file on a terminal
            except OSError:
                pass
        os.close(container.stdin_fd)
        container.stdin_fd = -1

    # ---- exits ------------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            container = self.by_pid.pop(pid, None)
            if container is None:
                continue  # an orphan reparented to us
            if os.WIFSIGNALED(status):
                container.exit_code = 128 + os.WTERMSIG(status)
            else:
                container.exit_code = os.waitstatus_to_exitcode(status)
            container.exited_ns = time.monotonic_ns()
            container.finished = rfc3339nano()

    def _finish(self, container: Container) -> None:
        """The init is reaped and its output drained: record, clean up, tell."""
        for fd in list(container.outputs):
            for _ in range(256):  # what is buffered, not what a leftover process writes on
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                stream = container.outputs[fd]
                if container.log is not None:
                    container.log.write("stdout" if stream == STDOUT else "stderr", data)
                chunk = data if container.tty else frame(stream, data)
                for conn in list(container.attached):
                    if stream in conn.streams:
                        self._send(conn, chunk)
            self._close_output(container, fd)
        if container.log is not None:
            container.log.close()
        container.stdin_buf.clear()
        self._close_stdin(container)
        if container.exec_of:
            self._finish_exec(container)
            return
        finished = container.finished or rfc3339nano()
        runtime = container.runtime or self.runtime
        record = {
            "ExitCode": container.exit_code,
            "FinishedAt": finished,
            "Pid": container.pid,
            "OOMKilled": _oom_killed(runtime, container.id),
        }
        try:
            write_atomic(container.exit_file, record)
        except OSError as exc:
            _log(f"cannot write the exit of {container.id[:12]}: {exc}")
        try:
            runtime.delete(container.id)
        except BerthError as exc:
            _log(f"cleanup of {container.id[:12]}: {exc}")
        del self.containers[container.id]
        for conn in list(container.attached):
            conn.closing = True
            self._flush_conn(conn)
        container.attached.clear()
        event = json.dumps({"event": "exit", "id": container.id, **record}).encode() + b"\n"
        for conn in list(self.events):
            self._send(conn, event)

    def _finish_exec(self, proc: Container) -> None:
        self.execs.pop(proc.id, None)
        record = {"ExitCode": proc.exit_code, "Pid": proc.pid, "container": proc.exec_of}
        # The event first: the daemon records the exit code before the client's stream
        # ends (the docker CLI inspects the exec right after).
        event = json.dumps({"event": "exec-exit", "id": proc.id, **record}).encode() + b"\n"
        for conn in list(self.events):
            self._send(conn, event)
        for conn in list(proc.attached):
            conn.closing = True
            self._flush_conn(conn)
        proc.attached.clear()


def _oom_killed(runtime: Backend, container_id: str) -> bool:
    """Whether the kernel's OOM killer struck in the container's cgroup (read before
    the runtime deletes it)."""
    from berth.linux.cgroups import Cgroup

    try:
        paths = runtime.cgroup_paths(container_id)
        return bool(paths) and Cgroup.from_paths(paths).oom_killed()
    except (BerthError, OSError):
        return False


def _loopback_up(pid: int) -> None:
    """Bring up ``lo`` in the container's new network namespace (Docker does so).

    The monitor is single-threaded, so it can step into the namespace and back."""
    import fcntl

    from berth.linux import syscalls as sc

    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(target, 0x40000000)
        try:
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
            try:
                request = struct.pack("16sH14x", b"lo", 0)
                flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), 0x8913, request))[1]
                request = struct.pack("16sH14x", b"lo", flags | 0x1 | 0x40)  # IFF_UP|RUNNING
                fcntl.ioctl(sock.fileno(), 0x8914, request)
            finally:
                sock.close()
        finally:
            sc.setns(own, 0x40000000)
    finally:
        os.close(own)
        os.close(target)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="berth-monitor")
    parser.add_argument("--exec-root", default="/run/berth")
    args = parser.parse_args(argv)
    os.umask(0o022)
    Monitor(args.exec_root).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
