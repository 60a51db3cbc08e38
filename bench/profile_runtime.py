"""Where the time of one container start goes, without touching the runtime's source.

Two views (run as root):

* ``lib``: ``Runtime(root).run`` in this warm process, with the runtime's functions
  wrapped by timers, in the parent *and* in the forked stage 1 and init (they inherit
  the wrappers and write to one log through an inherited descriptor; every process
  reads the same CLOCK_MONOTONIC). Prints, per step, when it starts (ms after
  ``run`` began) and how long it takes (p50, p90 over the runs).
  ``--gap 0.1`` sleeps between containers: a cgroup v1 join then usually pays an RCU
  grace period, as a container started now and then does.
* ``cli``: ``berth-runtime run`` as a fresh process, split into interpreter start-up,
  imports, ``Runtime.run`` and interpreter exit, with the environment's bytecode
  (``PYTHONDONTWRITEBYTECODE`` and any stale .pyc) and with bytecode cached in a
  private ``PYTHONPYCACHEPREFIX``.

    sudo .venv/bin/python bench/profile_runtime.py lib --iterations 50 [--gap 0.1]
    sudo .venv/bin/python bench/profile_runtime.py cli --iterations 30
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_runtime import kill_run_cgroups, make_bundle  # the benchmark's bundle

# ------------------------------------------------------------------------- lib view

_log_fd = -1


def _emit(label: str, start: int, end: int) -> None:
    os.write(_log_fd, f"{os.getpid()}\t{label}\t{start}\t{end}\n".encode())


def _wrap(
    owner: Any,
    name: str,
    label: str | None = None,
    *,
    static: bool = False,
    marker: bool = False,
    labeller: Callable[..., str] | None = None,
) -> bool:
    """Time ``owner.name``; a marker (for calls that never return) logs its start only."""
    fn = getattr(owner, name, None)
    if fn is None:
        print(f"profile: {getattr(owner, '__name__', owner)}.{name} not found, not timed")
        return False
    fixed = label or name

    def timed(*args: Any, **kwargs: Any) -> Any:
        text = labeller(*args, **kwargs) if labeller else fixed
        start = time.perf_counter_ns()
        if marker:
            _emit(text, start, start)
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        finally:
            _emit(text, start, time.perf_counter_ns())

    setattr(owner, name, staticmethod(timed) if static else timed)
    return True


def _install_timers() -> None:
    from berth.linux import cgroups
    from berth.runtime import container, hooks, process, rootfs, spec, state

    runtime = container.Runtime
    cgroup_v1 = getattr(cgroups, "_CgroupV1", None)
    cgroup_v2 = getattr(cgroups, "_CgroupV2", None)
    steps: list[tuple[Any, str, str]] = [
        (runtime, "run", "run"),
        (runtime, "create", "create"),
        (runtime, "start", "start"),
        (runtime, "delete", "delete"),
        (runtime, "status", "status"),
        (runtime, "_follow_create", "create: wait for stage 1 and init"),
        (spec, "load", "spec.load"),
        (spec, "validate", "spec.validate"),
        (state.StateStore, "reserve", "store.reserve"),
        (state.StateStore, "save", "store.save"),
        (state.StateStore, "load", "store.load"),
        (state.StateStore, "remove", "store.remove"),
        (cgroups, "detect_mode", "cgroups.detect_mode"),
        (container, "preload_for_child", "preload_for_child"),
        (container, "wait_foreground", "wait_foreground (exec, exit, reap)"),
        (container, "_read_fifo", "start: read the exec fifo"),
        (container, "_wait_cgroup_empty", "delete: wait for an empty cgroup"),
        (container, "_wait_dead", "delete: wait for the init's death"),
        (container, "process_start_time", "process_start_time"),
        (container, "join_namespaces", "join_namespaces"),
        (container.sc, "unshare", "unshare(2)"),
        (container, "_send", "send a message"),
        (os, "fork", "os.fork"),
        (hooks, "run", "hooks.run"),
        (rootfs.RootfsBuilder, "prepare", "rootfs.prepare"),
        (rootfs.RootfsBuilder, "create_devices", "  create_devices"),
        (rootfs.RootfsBuilder, "dev_symlinks", "  dev_symlinks"),
        (rootfs.RootfsBuilder, "pivot", "rootfs.pivot"),
        (rootfs.RootfsBuilder, "finish", "rootfs.finish (read-only and masked paths)"),
        (process, "reset_signals", "reset_signals"),
        (process, "build_env", "build_env"),
        (process, "resolve_executable", "resolve_executable"),
        (process, "apply_rlimits", "apply_rlimits"),
        (process, "stub_fd", "execstub memfd"),
        (process, "finalize", "process.finalize (caps, no_new_privs, seccomp)"),
        (process, "prepare_exec_fds", "prepare_exec_fds"),
    ]
    for cls in (cgroup_v1, cgroup_v2):
        if cls is None:
            continue
        steps += [
            (cls, "create", "cgroup.create (mkdir)"),
            (cls, "apply", "cgroup.apply (resources, device rules)"),
            (cls, "join", "cgroup.join (cgroup.procs writes)"),
            (cls, "pids", "cgroup.pids"),
            (cls, "destroy", "cgroup.destroy (rmdir)"),
        ]
    for owner, name, label in steps:
        _wrap(owner, name, label)
    _wrap(cgroups.Cgroup, "for_container", "Cgroup.for_container", static=True)
    _wrap(cgroups.Cgroup, "kill_all", "cgroup.kill_all")
    _wrap(container._InitContext, "stage1", "stage1 begins", marker=True)
    _wrap(container._InitContext, "init", "init begins", marker=True)
    _wrap(process, "exec_process", "exec of the user's program", marker=True)
    _wrap(
        rootfs.RootfsBuilder,
        "mount_one",
        labeller=lambda _self, mount: f"  mount {mount.get('destination')}",
    )


def profile_lib(bundle: str, workdir: str, iterations: int, gap: float) -> None:
    global _log_fd
    from berth.runtime.container import Runtime

    log_path = os.path.join(workdir, "timers.log")
    _log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    _install_timers()
    runtime = Runtime(os.path.join(workdir, "state"))
    warmup = 3
    walls: list[float] = []
    devnull = os.open(os.devnull, os.O_RDWR)
    saved = os.dup(1)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    try:
        for i in range(iterations + warmup):
            time.sleep(gap)
            os.write(_log_fd, f"RUN\t{i}\n".encode())
            start = time.perf_counter_ns()
            code = runtime.run(f"bench-profile-{os.getpid()}-{i}", bundle)
            if i >= warmup:
                walls.append((time.perf_counter_ns() - start) / 1e6)
            if code != 0:
                raise SystemExit(f"the container exited {code}")
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    os.close(_log_fd)
    runs: dict[int, list[tuple[int, str, int, int]]] = collections.defaultdict(list)
    current = -1
    with open(log_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "RUN":
                current = int(parts[1])
            elif current >= warmup:
                runs[current].append((int(parts[0]), parts[1], int(parts[2]), int(parts[3])))
    me = os.getpid()
    starts: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    durations: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for events in runs.values():
        roles = {me: "parent"}
        for pid, label, _, _ in events:
            if label == "stage1 begins":
                roles[pid] = "stage1"
            elif label == "init begins":
                roles[pid] = "init"
        begin = min(s for pid, label, s, _ in events if label == "run" and pid == me)
        seen: collections.Counter[tuple[str, str]] = collections.Counter()
        for pid, label, s, e in events:
            role = roles.get(pid, "child")
            seen[(role, label)] += 1
            n = seen[(role, label)]
            key = (role, label if n == 1 else f"{label} #{n}")
            starts[key].append((s - begin) / 1e6)
            durations[key].append((e - s) / 1e6)
    walls.sort()
    print(
        f"Runtime.run, {iterations} runs, {gap * 1000:.0f} ms between them:"
        f" p50 {statistics.median(walls):.2f} ms, p90 {_pct(walls, 0.9):.2f},"
        f" min {walls[0]:.2f}"
    )
    print(f"{'at ms':>7} {'p50 ms':>7} {'p90 ms':>7}  {'process':7}  step")
    for key in sorted(starts, key=lambda k: statistics.median(starts[k])):
        d = sorted(durations[key])
        print(
            f"{statistics.median(starts[key]):7.2f} {statistics.median(d):7.3f}"
            f" {_pct(d, 0.9):7.3f}  {key[0]:7}  {key[1]}"
        )
    print("('at' is the median start after run() began; steps nest: indented ones and")
    print(" those inside create/start/delete are part of the lines above them)")


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


# ------------------------------------------------------------------------- cli view

_CLI_WRAPPER = r"""
import time
t1 = time.perf_counter_ns()
import os, sys
import re  # the console script's own import
from berth.runtime.cli import main
t2 = time.perf_counter_ns()
from berth.runtime import container
t3 = time.perf_counter_ns()
me = os.getpid()
events = []
def wrap(owner, name):
    fn = getattr(owner, name)
    def timed(*args, **kwargs):
        start = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            if os.getpid() == me:
                events.append((name, start, time.perf_counter_ns()))
    setattr(owner, name, timed)
for name in ("run", "create", "start", "delete"):
    wrap(container.Runtime, name)
wrap(container, "wait_foreground")
sys.argv = ["berth-runtime", *sys.argv[1:]]
code = main()
t4 = time.perf_counter_ns()
fd = int(os.environ["BERTH_PROFILE_FD"])
os.write(fd, repr({"t1": t1, "t2": t2, "t3": t3, "t4": t4, "events": events}).encode())
sys.exit(code)
"""


def profile_cli(bundle: str, workdir: str, iterations: int) -> None:
    import ast

    base = dict(os.environ)
    cached = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = os.path.join(workdir, "pycache")
    variants = {"bytecode as the environment has it": base, "bytecode cached": cached}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    warmup = 2
    for i in range(iterations + warmup):
        for name, env in variants.items():
            r, w = os.pipe()
            env = {**env, "BERTH_PROFILE_FD": str(w)}
            argv = [sys.executable, "-c", _CLI_WRAPPER, "--root", os.path.join(workdir, "st")]
            argv += ["run", "--bundle", bundle, f"bench-profile-{os.getpid()}-{i}-{len(name)}"]
            t0 = time.perf_counter_ns()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, pass_fds=(w,)
            )
            os.close(w)
            with os.fdopen(r, "rb") as f:
                data = f.read()
            proc.wait()
            t5 = time.perf_counter_ns()
            if proc.returncode != 0:
                raise SystemExit(f"berth-runtime run exited {proc.returncode}")
            if i < warmup:
                continue
            d = ast.literal_eval(data.decode())
            ev = {n: (s, e) for n, s, e in d["events"]}

            def ms(a: int, b: int) -> float:
                return (b - a) / 1e6

            rows[name].append(
                {
                    "exec + interpreter start-up (site)": ms(t0, d["t1"]),
                    "import re, berth.runtime.cli": ms(d["t1"], d["t2"]),
                    "import berth.runtime.container": ms(d["t2"], d["t3"]),
                    "main() until Runtime.run": ms(d["t3"], ev["run"][0]),
                    "Runtime.run": ms(*ev["run"]),
                    "  create": ms(*ev["create"]),
                    "  start": ms(*ev["start"]),
                    "  wait_foreground": ms(*ev["wait_foreground"]),
                    "  delete": ms(*ev["delete"]),
                    "main() after Runtime.run": ms(ev["run"][1], d["t4"]),
                    "interpreter exit, reaped": ms(d["t4"], t5),
                    "total": ms(t0, t5),
                }
            )
    for name, samples in rows.items():
        print(f"berth-runtime run, {name}: p50 of {len(samples)} runs")
        for key in samples[0]:
            print(f"  {statistics.median(s[key] for s in samples):7.2f} ms  {key}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("view", choices=["lib", "cli"])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.0, help="lib: seconds between runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("profile_runtime: run as root", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="berth-profile-")
    try:
        bundle = make_bundle(os.path.join(workdir, "bundle"))
        if args.view == "lib":
            profile_lib(bundle, workdir, args.iterations, args.gap)
        else:
            profile_cli(bundle, workdir, args.iterations)
    finally:
        kill_run_cgroups(f"bench-profile-{os.getpid()}-")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
