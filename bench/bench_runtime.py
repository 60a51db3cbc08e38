"""Container start-to-exit latency: berth-runtime against runc, crun and a bare unshare.

Every contender starts the same busybox bundle (``true``, no terminal, read-only root,
runc's default namespaces, mounts, capabilities and device rules) and waits for it to
exit. The contenders run round-robin, each iteration in a rotated order, so that any
drift of the machine (page cache, RCU grace periods, other load) hits all of them alike.

Contenders (``--contenders`` picks a subset):

* ``berth-cli``      ``berth-runtime run``: a fresh interpreter per container, with the
                     environment as it is (``PYTHONDONTWRITEBYTECODE`` and stale ``.pyc``
                     files included: the report says whether bytecode was usable);
* ``berth-cli-pyc``  the same with bytecode compiled once into a private
                     ``PYTHONPYCACHEPREFIX`` (what an installed package gets);
* ``runc``           ``runc run``;
* ``crun``           ``crun run``, from one long-lived helper living in a private mount
                     namespace where ``/sys/fs/cgroup/unified`` is unmounted (crun 1.8
                     refuses this host's hybrid cgroup layout otherwise): only crun's own
                     process is timed, by the helper, never ``unshare``;
* ``unshare``        ``unshare --pid --fork --mount --uts --ipc --net --cgroup true``: the
                     kernel's floor for a process in new namespaces, with no rootfs;
* ``berth-lib``      ``Runtime(root).run(id, bundle)`` called in this process, the engine's
                     hot path (imported once; only the call is timed).

Run as root: ``sudo .venv/bin/python bench/bench_runtime.py --iterations 200``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

RUNC_DEFAULT = "/usr/sbin/runc"
CGROUP_ROOT = "/sys/fs/cgroup"
UNIFIED_MOUNT = "/sys/fs/cgroup/unified"
ALL_CONTENDERS = ("berth-cli", "berth-cli-pyc", "runc", "crun", "unshare", "berth-lib")
MAX_CONSECUTIVE_FAILURES = 3
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

# The crun helper: reads one JSON argv per line, runs it, answers with its exit code,
# its wall time (timed here, so neither the pipe nor unshare is counted) and stderr.
CRUN_HELPER = r"""
import json, os, subprocess, sys, time
devnull = os.open(os.devnull, os.O_RDWR)
for line in sys.stdin:
    argv = json.loads(line)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=devnull, stdout=devnull, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    err = proc.stderr.decode(errors="replace").strip()[-400:]
    sys.stdout.write(json.dumps({"rc": proc.returncode, "t": took, "err": err}) + "\n")
    sys.stdout.flush()
"""


class RunFailed(Exception):
    """One container start failed; the message says how."""


# ----------------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summarize(samples_ms: list[float]) -> dict[str, float]:
    values = sorted(samples_ms)
    if not values:
        return {}
    return {
        "p50": percentile(values, 0.50),
        "p95": percentile(values, 0.95),
        "mean": sum(values) / len(values),
        "min": values[0],
        "max": values[-1],
    }


# ------------------------------------------------------------------------ contenders


@dataclass
class Contender:
    key: str
    label: str
    unavailable: str | None = None
    samples_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    consecutive_failures: int = 0

    def setup(self) -> None:
        """Check that the contender can run at all; raise RunFailed with the reason."""

    def run_once(self, container_id: str) -> float:
        """Start one container and wait for its exit; the wall time in seconds."""
        raise NotImplementedError

    def cleanup(self) -> list[str]:
        """Delete every container this contender left; what could not be deleted."""
        return []

    def close(self) -> None:
        """Stop any helper process."""


def _finish(proc: subprocess.Popen[bytes]) -> None:
    """Interrupted: let the runtime finish its (short) container rather than kill it."""
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def _tail(text: str | bytes | None, limit: int = 300) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = (text or "").strip()
    return text[-limit:] if text else "(no output)"


@dataclass
class CliContender(Contender):
    """A runc-style command line, one fresh process per container."""

    argv_prefix: list[str] = field(default_factory=list)
    state_root: str | None = None
    bundle: str = ""
    env: dict[str, str] | None = None

    def argv(self, container_id: str) -> list[str]:
        return [*self.argv_prefix, "run", "--bundle", self.bundle, container_id]

    def setup(self) -> None:
        if not os.access(self.argv_prefix[0], os.X_OK):
            raise RunFailed(f"{self.argv_prefix[0]} is not installed")

    def run_once(self, container_id: str) -> float:
        argv = self.argv(container_id)
        start = time.perf_counter()
        # Its own session: a Ctrl-C meant for the benchmark does not hit the runtime
        # half-way through a create (that would orphan the container's init).
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate()
        except BaseException:
            _finish(proc)
            raise
        took = time.perf_counter() - start
        if proc.returncode != 0:
            raise RunFailed(f"exit {proc.returncode}: {_tail(err)}")
        return took

    def leftover_ids(self) -> list[str]:
        if not self.state_root or not os.path.isdir(self.state_root):
            return []
        return sorted(
            name
            for name in os.listdir(self.state_root)
            if os.path.isdir(os.path.join(self.state_root, name))
        )

    def delete_argv(self, container_id: str) -> list[str]:
        return [*self.argv_prefix, "delete", "--force", container_id]

    def cleanup(self) -> list[str]:
        problems = []
        for container_id in self.leftover_ids():
            proc = subprocess.run(
                self.delete_argv(container_id),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self.env,
            )
            if proc.returncode != 0:
                problems.append(f"{self.key}: delete {container_id}: {_tail(proc.stderr)}")
        return problems


@dataclass
class UnshareContender(CliContender):
    """The floor: a process in six new namespaces, no rootfs, no cgroup, no runtime."""

    def argv(self, container_id: str) -> list[str]:
        del container_id
        return list(self.argv_prefix)

    def setup(self) -> None:
        if shutil.which(self.argv_prefix[0]) is None:
            raise RunFailed(f"{self.argv_prefix[0]} is not installed")


def _hidden_unified_argv(argv: list[str]) -> list[str]:
    """``argv`` in a private mount namespace without the cgroup2 mount of a hybrid host."""
    script = f'umount {UNIFIED_MOUNT} 2>/dev/null; exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


@dataclass
class CrunContender(CliContender):
    """crun, driven by one long-lived helper inside a private mount namespace."""

    helper: subprocess.Popen[str] | None = None

    def setup(self) -> None:
        if not os.access(self.argv_prefix[0], os.X_OK):
            raise RunFailed("crun is not installed (apt-get install crun)")
        argv = _hidden_unified_argv([sys.executable, "-I", "-S", "-c", CRUN_HELPER])
        self.helper = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C stops the benchmark, which then closes it
        )

    def _ask(self, argv: list[str]) -> dict[str, Any]:
        helper = self.helper
        if helper is None or helper.stdin is None or helper.stdout is None:
            raise RunFailed("the crun helper is not running")
        try:
            helper.stdin.write(json.dumps(argv) + "\n")
            helper.stdin.flush()
        except BrokenPipeError:
            raise RunFailed(f"the crun helper died: {self._helper_error()}") from None
        line = helper.stdout.readline()
        if not line:
            raise RunFailed(f"the crun helper died: {self._helper_error()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _helper_error(self) -> str:
        helper = self.helper
        if helper is None or helper.stderr is None:
            return "(not started)"
        try:
            helper.wait(timeout=2)
            return _tail(helper.stderr.read())
        except subprocess.TimeoutExpired:
            return "(no exit)"

    def run_once(self, container_id: str) -> float:
        answer = self._ask(self.argv(container_id))
        if answer["rc"] != 0:
            raise RunFailed(f"exit {answer['rc']}: {answer['err'] or '(no output)'}")
        return float(answer["t"])

    def cleanup(self) -> list[str]:
        problems = []
        for container_id in self.leftover_ids():
            # A fresh namespace each time: the helper may be the thing that broke.
            proc = subprocess.run(
                _hidden_unified_argv(self.delete_argv(container_id)),
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            if proc.returncode != 0:
                problems.append(f"crun: delete {container_id}: {_tail(proc.stderr)}")
        return problems

    def close(self) -> None:
        helper = self.helper
        if helper is None:
            return
        self.helper = None
        try:
            if helper.stdin is not None:
                helper.stdin.close()
            helper.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            helper.kill()
            helper.wait()
        for stream in (helper.stdout, helper.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def _stdio_on_devnull() -> Iterator[None]:
    """Give the container /dev/null on stdin and stdout, as the CLI contenders get."""
    saved = [os.dup(0), os.dup(1)]
    devnull = os.open(os.devnull, os.O_RDWR)
    sys.stdout.flush()
    try:
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        for fd in (*saved, devnull):
            os.close(fd)


@dataclass
class LibraryContender(Contender):
    """``Runtime(root).run`` called in this already-warm process."""

    state_root: str = ""
    bundle: str = ""
    runtime: Any = None

    def setup(self) -> None:
        from berth.runtime.container import Runtime

        self.runtime = Runtime(self.state_root)

    def run_once(self, container_id: str) -> float:
        # Runtime.run forwards SIGINT and SIGTERM to the container while it waits, so a
        # Ctrl-C would be lost: hold them until the call returns, then they interrupt us.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            with _stdio_on_devnull():
                start = time.perf_counter()
                try:
                    code = self.runtime.run(container_id, self.bundle)
                except Exception as exc:
                    raise RunFailed(f"{type(exc).__name__}: {exc}") from None
                took = time.perf_counter() - start
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if code != 0:
            raise RunFailed(f"exit {code}")
        return took

    def cleanup(self) -> list[str]:
        if self.runtime is None or not os.path.isdir(self.state_root):
            return []
        problems = []
        for container_id in sorted(os.listdir(self.state_root)):
            try:
                self.runtime.delete(container_id, force=True)
            except Exception as exc:
                # A container whose create failed half-way has no state.json to load.
                shutil.rmtree(os.path.join(self.state_root, container_id), ignore_errors=True)
                if os.path.exists(os.path.join(self.state_root, container_id)):
                    problems.append(f"berth-lib: delete {container_id}: {exc}")
        return problems


# ------------------------------------------------------------------------ the bundle


def make_bundle(path: str) -> str:
    """A busybox bundle: ``true``, no terminal, a read-only root, runc's defaults."""
    from berth.images import busybox_rootfs
    from berth.runtime.spec import default_spec

    os.makedirs(path)
    busybox_rootfs.copy_to(os.path.join(path, "rootfs"))
    config = default_spec()
    # crun 1.8 knows runtime-spec 1.0 and 1.1 only; every contender gets the same file.
    config["ociVersion"] = "1.0.2-dev"
    config["process"]["terminal"] = False
    config["process"]["args"] = ["true"]
    config["root"] = {"path": "rootfs", "readonly": True}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path


# ------------------------------------------------------------------- the machine


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _cgroup_layout() -> str:
    fstypes: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstypes[fields[4]] = fields[sep + 1]
    if fstypes.get(CGROUP_ROOT) == "cgroup2":
        return "v2 (unified)"
    if fstypes.get(UNIFIED_MOUNT) == "cgroup2":
        return "hybrid (v1 hierarchies + cgroup2 at /sys/fs/cgroup/unified)"
    return "v1"


def bytecode_report() -> dict[str, Any]:
    """Whether a fresh ``berth-runtime`` can load its modules from .pyc files.

    With PYTHONDONTWRITEBYTECODE set, a stale or missing .pyc is never rewritten: each
    start compiles the module again.
    """
    import importlib.util

    import berth

    package_dir = os.path.dirname(os.path.abspath(berth.__file__))
    stale, missing, fresh = [], [], []
    for dirpath, dirnames, filenames in os.walk(package_dir):
        # berth-runtime loads the top level, runtime/ and linux/ only.
        if dirpath == package_dir:
            dirnames[:] = [d for d in dirnames if d in ("runtime", "linux")]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            source = os.path.join(dirpath, name)
            rel = os.path.relpath(source, package_dir)
            cached = importlib.util.cache_from_source(source)
            try:
                with open(cached, "rb") as f:
                    header = f.read(16)
            except OSError:
                missing.append(rel)
                continue
            flags = int.from_bytes(header[4:8], "little")
            st = os.stat(source)
            if flags == 0 and (
                int.from_bytes(header[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
                or int.from_bytes(header[12:16], "little") != st.st_size & 0xFFFFFFFF
            ):
                stale.append(rel)
            else:
                fresh.append(rel)
    return {
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
        "fresh": len(fresh),
        "stale": sorted(stale),
        "missing": sorted(missing),
    }


def machine_info(runc: str, crun: str | None, berth_cli: str) -> dict[str, Any]:
    from berth import __version__

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "cgroups": _cgroup_layout(),
        "berth": __version__,
        "berth_runtime_cli": berth_cli,
        "runc": _first_line([runc, "--version"]),
        "crun": _first_line([crun, "--version"]) if crun else "not installed",
        "loadavg_start": os.getloadavg()[0],
        "bytecode": bytecode_report(),
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


# --------------------------------------------------------------------- leftovers


def find_leftovers(id_prefix: str, workdir: str) -> list[str]:
    """Cgroups, mounts and processes that still carry this run's ids or paths."""
    found = []
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT):
        for name in list(dirnames):
            if name.startswith(id_prefix):
                found.append(f"cgroup {os.path.join(dirpath, name)}")
                dirnames.remove(name)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if workdir in line:
                found.append(f"mount {line.split()[4]}")
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if id_prefix in cmdline or workdir in cmdline:
            found.append(f"process {entry}: {cmdline.strip()[:120]}")
    return found


def _run_cgroups(id_prefix: str) -> list[str]:
    """This run's cgroup directories in every hierarchy, deepest first."""
    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT, topdown=False):
        found.extend(os.path.join(dirpath, d) for d in dirnames if id_prefix in dirpath + "/" + d)
    return found


def kill_run_cgroups(id_prefix: str, timeout: float = 5.0) -> None:
    """SIGKILL what is still in this run's cgroups (an init orphaned by an interrupted
    runtime), then rmdir them, deepest first."""
    deadline = time.monotonic() + timeout
    while True:
        pids: set[int] = set()
        for path in _run_cgroups(id_prefix):
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    pids.update(int(p) for p in f.read().split())
            except OSError:
                continue
        pids.discard(os.getpid())
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    _reap_orphans()
    for path in _run_cgroups(id_prefix):
        try:
            os.rmdir(path)
        except OSError:
            pass


def _reap_orphans() -> None:
    """Runtime.run made this process a subreaper: collect any orphan that ended here."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# -------------------------------------------------------------------------- driving


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_rounds(
    contenders: list[Contender],
    rounds: int,
    id_of: Callable[[Contender, int], str],
    record: bool,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Round-robin: every round runs each live contender once, the order rotated."""
    for i in range(rounds):
        live = [c for c in contenders if c.unavailable is None]
        if not live:
            return
        shift = i % len(live)
        for contender in live[shift:] + live[:shift]:
            try:
                took = contender.run_once(id_of(contender, i))
            except RunFailed as exc:
                contender.failures.append(str(exc))
                contender.consecutive_failures += 1
                if not record or contender.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    contender.unavailable = str(exc)
                continue
            contender.consecutive_failures = 0
            if record:
                contender.samples_ms.append(took * 1000)
        if progress is not None:
            progress(i + 1)


def build_contenders(args: argparse.Namespace, workdir: str, bundle: str) -> list[Contender]:
    wanted = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(ALL_CONTENDERS))
    if unknown:
        raise SystemExit(f"unknown contender(s) {', '.join(unknown)}: use {ALL_CONTENDERS}")

    def state(key: str) -> str:
        return os.path.join(workdir, f"state-{key}")

    pyc_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    pyc_env["PYTHONPYCACHEPREFIX"] = os.path.join(workdir, "pycache")
    made: dict[str, Contender] = {
        "berth-cli": CliContender(
            "berth-cli",
            "berth-runtime run",
            argv_prefix=[args.berth_runtime, "--root", state("berth-cli")],
            state_root=state("berth-cli"),
            bundle=bundle,
        ),
        "berth-cli-pyc": CliContender(
            "berth-cli-pyc",
            "berth-runtime run (.pyc cached)",
            argv_prefix=[args.berth_runtime, "--root", state("berth-cli-pyc")],
            state_root=state("berth-cli-pyc"),
            bundle=bundle,
            env=pyc_env,
        ),
        "runc": CliContender(
            "runc",
            "runc run",
            argv_prefix=[args.runc, "--root", state("runc")],
            state_root=state("runc"),
            bundle=bundle,
        ),
        "crun": CrunContender(
            "crun",
            "crun run",
            argv_prefix=[args.crun or "crun", "--root", state("crun")],
            state_root=state("crun"),
            bundle=bundle,
        ),
        "unshare": UnshareContender(
            "unshare",
            "unshare (6 namespaces) true",
            argv_prefix=[
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--cgroup",
                "true",
            ],
        ),
        "berth-lib": LibraryContender(
            "berth-lib",
            "berth Runtime.run (library)",
            state_root=state("berth-lib"),
            bundle=bundle,
        ),
    }
    return [made[name] for name in ALL_CONTENDERS if name in wanted]


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.1f}"


def report(contenders: list[Contender], machine: dict[str, Any], iterations: int) -> str:
    lines = [
        f"machine: {machine['nproc']} cpus ({machine['cpu']}), kernel {machine['kernel']},"
        f" {machine['os']}, python {machine['python']}",
        f"cgroups: {machine['cgroups']}",
        f"runc: {machine['runc']}; crun: {machine['crun']}",
        f"date: {machine['date']}; {iterations} iterations, round-robin;"
        f" load average {machine['loadavg_start']:.2f} -> {machine.get('loadavg_end', 0):.2f}",
    ]
    bytecode = machine["bytecode"]
    if bytecode["stale"] or bytecode["missing"]:
        lines.append(
            f"bytecode: {len(bytecode['stale'])} stale and {len(bytecode['missing'])} missing"
            f" .pyc of berth's modules, PYTHONDONTWRITEBYTECODE="
            f"{bytecode['PYTHONDONTWRITEBYTECODE'] or '(unset)'}: 'berth-runtime run'"
            " compiles them on every start"
        )
    runc = next((c for c in contenders if c.key == "runc" and c.samples_ms), None)
    runc_p50 = summarize(runc.samples_ms)["p50"] if runc else None
    header = ["contender", "n", "p50 ms", "p95 ms", "mean ms", "min ms", "p50 vs runc"]
    rows = [header]
    notes = []
    for c in contenders:
        stats = summarize(c.samples_ms)
        ratio = "-"
        if runc_p50 and stats:
            ratio = f"{stats['p50'] / runc_p50:.2f}x"
        n = f"{len(c.samples_ms)}"
        if c.failures:
            n += f" ({len(c.failures)} failed)"
        if c.unavailable and not c.samples_ms:
            rows.append([c.label, "0", "-", "-", "-", "-", f"unavailable: {c.unavailable}"])
            continue
        if c.unavailable:
            notes.append(f"{c.label}: stopped after failures: {c.unavailable}")
        elif c.failures:
            notes.append(f"{c.label}: first failure: {c.failures[0]}")
        rows.append(
            [
                c.label,
                n,
                _fmt(stats.get("p50")),
                _fmt(stats.get("p95")),
                _fmt(stats.get("mean")),
                _fmt(stats.get("min")),
                ratio,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines.append("")
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if i == 0 or i == len(row) - 1 else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    if runc_p50:
        lines.append("")
        for c in contenders:
            if c.key != "runc" and c.samples_ms:
                factor = summarize(c.samples_ms)["p50"] / runc_p50
                lines.append(f"{c.label} / runc = {factor:.2f}x (p50)")
    lib = next((c for c in contenders if c.key == "berth-lib" and c.samples_ms), None)
    if lib:
        p50 = summarize(lib.samples_ms)["p50"]
        verdict = "meets" if p50 < 15 else "misses"
        lines.append(f"library hot path p50 {p50:.1f} ms {verdict} the < 15 ms goal")
    lines.extend(notes)
    return "\n".join(lines)


def to_json(
    contenders: list[Contender], machine: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    runc = next((c for c in contenders if c.key == "runc" and c.samples_ms), None)
    runc_p50 = summarize(runc.samples_ms)["p50"] if runc else None
    result: dict[str, Any] = {
        "benchmark": "container start-to-exit of `true` (busybox bundle, read-only root)",
        "iterations": args.iterations,
        "warmup": args.warmup,
        "machine": machine,
        "contenders": {},
    }
    for c in contenders:
        stats = summarize(c.samples_ms)
        entry: dict[str, Any] = {
            "label": c.label,
            "status": f"unavailable: {c.unavailable}" if c.unavailable else "ok",
            "n": len(c.samples_ms),
            "failures": c.failures,
            **{f"{k}_ms": round(v, 3) for k, v in stats.items()},
            "samples_ms": [round(s, 3) for s in c.samples_ms],
        }
        if runc_p50 and stats:
            entry["p50_vs_runc"] = round(stats["p50"] / runc_p50, 3)
        result["contenders"][c.key] = entry
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    here = os.path.dirname(os.path.abspath(sys.executable))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers here")
    parser.add_argument(
        "--contenders",
        default=",".join(ALL_CONTENDERS),
        help=f"comma-separated subset of {','.join(ALL_CONTENDERS)}",
    )
    parser.add_argument(
        "--berth-runtime",
        default=shutil.which("berth-runtime", path=here) or shutil.which("berth-runtime"),
        help="the berth-runtime command (default: beside this interpreter)",
    )
    parser.add_argument("--runc", default=shutil.which("runc") or RUNC_DEFAULT)
    parser.add_argument("--crun", default=shutil.which("crun"))
    parser.add_argument(
        "--keep-workdir", action="store_true", help="leave the temp dir (bundle) behind"
    )
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be at least 1 and --warmup at least 0")
    if not args.berth_runtime:
        parser.error("berth-runtime not found: pass --berth-runtime PATH")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_runtime: run as root (containers need it)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    id_prefix = f"bench-{os.getpid()}-"
    workdir = tempfile.mkdtemp(prefix="berth-bench-")
    contenders: list[Contender] = []
    interrupted = False
    try:
        bundle = make_bundle(os.path.join(workdir, "bundle"))
        contenders = build_contenders(args, workdir, bundle)
        machine = machine_info(args.runc, args.crun, args.berth_runtime)
        for c in contenders:
            try:
                c.setup()
            except RunFailed as exc:
                c.unavailable = str(exc)

        def id_of(contender: Contender, i: int, phase: str = "") -> str:
            return f"{id_prefix}{contender.key}-{phase}{i}"

        def warm_id(contender: Contender, i: int) -> str:
            return id_of(contender, i, "w")

        def progress(done: int) -> None:
            if done % 10 == 0 or done == args.iterations:
                print(f"\r{done}/{args.iterations}", end="", file=sys.stderr, flush=True)

        # Warm-up rounds (page cache, imports, the .pyc cache); a failure here is final.
        run_rounds(contenders, max(args.warmup, 1), warm_id, record=False)
        run_rounds(contenders, args.iterations, id_of, record=True, progress=progress)
        print(file=sys.stderr)
        machine["loadavg_end"] = os.getloadavg()[0]
        print(report(contenders, machine, args.iterations))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(to_json(contenders, machine, args), f, indent=2)
                f.write("\n")
            print(f"numbers written to {args.json}")
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: cleaning up", file=sys.stderr)
    finally:
        problems = []
        for c in contenders:
            c.close()
            problems.extend(c.cleanup())
        kill_run_cgroups(id_prefix)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
            if os.path.exists(workdir):
                problems.append(f"cannot remove {workdir}")
        leftovers = find_leftovers(id_prefix, workdir)
        for line in problems:
            # e.g. a runtime killed before it wrote its state: its cgroups went above
            print(f"cleanup note: {line}", file=sys.stderr)
        for line in leftovers:
            print(f"leftover: {line}", file=sys.stderr)
        if not leftovers:
            print(f"cleanup: no containers, cgroups, mounts or processes of {id_prefix}* left")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
