"""The builder's executing half: a parsed Dockerfile and a context into an image.

Each stage walks its instructions with the front half's ``StageScope``. A step that
changes files (RUN, COPY, ADD, WORKDIR) runs on an overlay snapshot prepared on the
parent's chain; its upper directory becomes the step's layer (``layer.write_layer``:
sorted entries, numeric owners, mtimes clamped to ``SOURCE_DATE_EPOCH``), and the
snapshot is committed under the layer's ChainID, so the final image needs no unpack.
Every other step only changes the config and adds a history entry with
``empty_layer``. Each step's result is an intermediate image (config + layers) kept
in the build cache (``cache.py``), so a rebuild re-runs only steps whose key changed.

RUN processes run under berth-runtime in a child process (``python -m
berth.runtime.cli run``): the runtime becomes a subreaper and waits for its
grandchild, which must not happen inside the daemon. Their output is streamed into the
build output (stderr wrapped in red, as dockerd does).

``run`` is called on a worker thread; the stages of one wave (``stages.plan``: none
depends on another) are built at once on a shared pool, their output put back in
Dockerfile order (``_Ordered``); ``emit`` receives Docker's JSON messages.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
import posixpath
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, cast

from berth.build import expand, parser, stages
from berth.build.cache import BuildCache, step_key
from berth.build.context import Context, clean_rel, file_digest
from berth.build.errors import BuildError
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound
from berth.images import layer as layers
from berth.images import manifest as mf
from berth.images.content import BlobFile
from berth.images.store import Image, ImageStore

EMPTY_TAR_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ["/bin/sh", "-c"]
INIT_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")
INIT_DIRS = ("etc", "dev", "proc", "sys")
_OCI_OF = {
    mf.DOCKER_LAYER: mf.OCI_LAYER,
    mf.DOCKER_LAYER_GZIP: mf.OCI_LAYER_GZIP,
    mf.DOCKER_LAYER_ZSTD: mf.OCI_LAYER_ZSTD,
}
_METADATA = {
    "ENV",
    "ARG",
    "LABEL",
    "EXPOSE",
    "USER",
    "VOLUME",
    "CMD",
    "ENTRYPOINT",
    "HEALTHCHECK",
    "SHELL",
    "STOPSIGNAL",
    "ONBUILD",
    "MAINTAINER",
}

Emit = Callable[[dict[str, Any]], None]
Puller = Callable[[str, str, Emit], None]  # name, platform, where progress goes


class Sandbox(Protocol):
    """A RUN step's network stack made by the daemon (engine/network)."""

    netns: str  # the namespace's path, joined by the step
    hosts: str  # /etc/hosts and /etc/resolv.conf for it
    resolv: str


class RunNetworks(Protocol):
    """The daemon's networks as the builder needs them: one sandbox per RUN step on a
    bridge network (the default one unless ``--network`` names another)."""

    def acquire(
        self, sandbox_id: str, network: str, hostname: str, extra_hosts: list[str]
    ) -> Sandbox: ...

    def release(self, sandbox_id: str) -> None: ...


class BuildFailed(BerthError):
    """A step failed; ``code`` is a RUN's exit status (Docker's errorDetail code)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class BuildOptions:
    dockerfile: str = "Dockerfile"
    dockerfile_text: bytes | None = None  # -f - : given apart from the context
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    target: str = ""
    no_cache: bool = False
    pull: bool = False
    quiet: bool = False
    network: str = ""
    extra_hosts: list[str] = field(default_factory=list)
    shm_size: int = 0
    cache_from: list[str] = field(default_factory=list)
    platform: str = ""


# a COPY/ADD source: the path as named, its stat, the path read (a named symlink followed)
_Source = tuple[str, os.stat_result, str]


@dataclass
class _State:
    """A stage while it is built: the current intermediate image."""

    image_id: str
    config: dict[str, Any]  # the whole image config (architecture, config, rootfs, ...)
    layers: list[mf.Descriptor]
    scope: expand.StageScope
    cmd_set: bool = False  # a CMD in this stage: a later ENTRYPOINT keeps it

    @property
    def run(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.config.setdefault("config", {}))

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def chain_top(self) -> str | None:
        chain = mf.chain_ids(self.diff_ids)
        return chain[-1] if chain else None


def _short(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def config_id(config: dict[str, Any]) -> str:
    return mf.ImageConfig(config).digest


def _epoch(build_args: dict[str, str]) -> int | None:
    """``SOURCE_DATE_EPOCH``: the build arg (as BuildKit takes it), else the daemon's
    environment; it clamps layer mtimes and dates history and the image."""
    text = build_args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(text.strip()) if text.strip().isdigit() else None


def _now(epoch: int | None) -> str:
    if epoch is not None:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    ns = time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


# ---- parallel stages -------------------------------------------------------------------------

_stage_pool: Any = None  # concurrent.futures.ThreadPoolExecutor, made on first use
_stage_pool_lock = threading.Lock()


def _stage_workers() -> Any:
    """One pool for the stages of every build, as many threads as cores: a wave of N
    stages uses at most min(N, cores) of them, and the threads (each with its own SQLite
    connections, images/db.py) live as long as the daemon instead of one set per build."""
    global _stage_pool
    with _stage_pool_lock:
        if _stage_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _stage_pool = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1, thread_name_prefix="berth-build-stage"
            )
        return _stage_pool


class _Ordered:
    """The output of stages built at once, in Dockerfile order, as if built one by one.

    A stage's messages go out live while every stage before it (in Dockerfile order)
    has finished; otherwise they are held and go out when those have. Which stage a
    message belongs to is the calling thread's (``bind``); a message of no stage (the
    end of the build) goes out at once."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._cond = threading.Condition()
        self._local = threading.local()
        self._order: list[int] = []
        self._live = 0  # position in _order of the stage whose output goes out live
        self._done: set[int] = set()
        self._held: dict[int, list[dict[str, Any]]] = {}
        self._closed = False

    def start(self, order: list[int]) -> None:
        with self._cond:
            self._order = list(order)

    def bind(self, stage: int | None) -> int | None:
        """Messages of this thread belong to ``stage`` from now on; returns the previous."""
        previous: int | None = getattr(self._local, "stage", None)
        self._local.stage = stage
        return previous

    def sender(self) -> Emit:
        """``send`` for the calling thread's stage, callable from any thread (a pull's
        progress arrives on the daemon's event loop)."""
        stage: int | None = getattr(self._local, "stage", None)
        return lambda message: self._send(stage, message)

    def send(self, message: dict[str, Any]) -> None:
        self._send(getattr(self._local, "stage", None), message)

    def _send(self, stage: int | None, message: dict[str, Any]) -> None:
        with self._cond:
            if stage is None:
                self._emit(message)
            elif self._closed:
                return
            elif self._live < len(self._order) and self._order[self._live] == stage:
                self._emit(message)
            else:
                self._held.setdefault(stage, []).append(message)

    def finish(self, stage: int) -> None:
        """A stage built: the next stages' held output goes out, up to one still running."""
        with self._cond:
            self._done.add(stage)
            while self._live < len(self._order) and self._order[self._live] in self._done:
                self._live += 1
                if self._live < len(self._order):
                    for message in self._held.pop(self._order[self._live], []):
                        self._emit(message)
            self._cond.notify_all()

    def close(self, failed: int) -> None:
        """A failed build: the held output of the stages up to the failing one goes out
        in order, the rest is dropped (a sequential build would not have run them)."""
        with self._cond:
            position = self._order.index(failed)
            for stage in self._order[self._live : position + 1]:
                for message in self._held.pop(stage, []):
                    self._emit(message)
            self._held.clear()
            self._closed = True


class Builder:
    """One build. ``run`` is blocking: call it on a worker thread."""

    def __init__(
        self,
        store: ImageStore,
        cache: BuildCache,
        work_root: str,
        emit: Emit,
        pull: Puller | None = None,
        networks: RunNetworks | None = None,
    ) -> None:
        self.store = store
        self.networks = networks  # None: RUN steps use the host's network (no daemon)
        self.cache = cache
        self.work_root = work_root
        self.runtime_root = os.path.join(work_root, "runtime")
        self._emit = emit
        self._pull = pull
        self.cancelled = threading.Event()
        self.options = BuildOptions()
        self.context: Context | None = None
        self.quiet = False
        self.use_cache = True
        self._built: dict[int, _State] = {}
        self._plan: stages.BuildPlan | None = None
        self._df: parser.Dockerfile | None = None
        self._first_step: dict[int, int] = {}  # each stage's FROM step, numbered up front
        self._total = 0
        # set.add/update are atomic under the GIL: stages add to it from their threads
        self._used_build_args: set[str] = set()
        self._out = _Ordered(emit)
        self._lock = threading.Lock()  # _built and _failures, written by stage threads
        self._failures: list[tuple[int, BaseException, bool]] = []  # stage, error, first?

    # ---- output ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A message of the calling thread's stage, in Dockerfile order (``_Ordered``)."""
        if not self.quiet:
            self._out.send({"stream": text})

    # ---- the whole build ------------------------------------------------------------------

    def prepare(self, context: Context, options: BuildOptions) -> parser.Dockerfile:
        """Read and parse the Dockerfile and plan the stages: errors here come before any
        output (the API answers them with a plain 400)."""
        self.context = context
        self.options = options
        self.quiet = options.quiet
        self.use_cache = not options.no_cache
        if options.dockerfile_text is not None:
            text = options.dockerfile_text
        else:
            text = context.read_dockerfile(options.dockerfile or "Dockerfile")
            context.hide_build_files(options.dockerfile or "Dockerfile")
        name = posixpath.basename(options.dockerfile or "Dockerfile") or "Dockerfile"
        df = parser.parse(text, name)
        self._df = df
        platform = expand.platform_args(options.platform or None)
        self._plan = stages.plan(df, options.target or None, options.build_args, platform)
        if options.labels:
            label = " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in options.labels.items())
            extra = parser.parse(f"FROM scratch\nLABEL {label}\n").instructions[1]
            self._plan.stages[self._plan.target].instructions.append(extra)
        if options.cache_from and self.use_cache:
            found = False
            for ref in options.cache_from:
                try:
                    self.store.get(ref)
                    found = True
                except BerthError:
                    continue
            self.use_cache = found  # dockerd: only the named images' chains count
        self._total = 0
        for index in self._plan.needed:  # Dockerfile order, whatever order stages run in
            self._first_step[index] = self._total + 1
            self._total += 1 + len(self._plan.stages[index].instructions)
        return df

    def run(self) -> Image:
        plan = self._plan
        assert plan is not None and self.context is not None
        os.makedirs(self.work_root, mode=0o700, exist_ok=True)
        self._out.start(plan.needed)
        for wave in plan.waves:
            self._build_wave(wave, plan)
        state = self._built[plan.target]
        unused = sorted(
            k
            for k in self.options.build_args
            if k not in self._used_build_args
            and k not in expand.PROXY_ARGS
            and k != "SOURCE_DATE_EPOCH"  # the builder's own
        )
        if unused:
            self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")
        image = self._final_image(state)
        self._emit({"aux": {"ID": image.id}})
        self.say(f"Successfully built {image.short_id}\n")
        for tag in self.options.tags:
            self.say(f"Successfully tagged {_familiar(tag)}\n")
        if self.quiet:
            self._emit({"stream": image.id + "\n"})
        return image

    def _final_image(self, state: _State) -> Image:
        self._ensure_snapshots(state.config, state.layers)
        names = [normal_tag(t) for t in self.options.tags]
        return self.store.create_image(copy.deepcopy(state.config), list(state.layers), names)

    # ---- stages ---------------------------------------------------------------------------

    def _build_wave(self, wave: list[int], plan: stages.BuildPlan) -> None:
        """Build stages that do not depend on each other at once (one alone on this
        thread). A failure cancels the others; when they have all stopped, the first
        failure in Dockerfile order is raised (not the errors the cancel caused)."""
        if len(wave) == 1:
            self._stage_job(wave[0], plan)
        else:
            pool = _stage_workers()
            jobs = [pool.submit(self._stage_job, index, plan) for index in wave]
            for job in jobs:
                job.result()  # _stage_job records failures: only waits here
        if self._failures:
            caused = [f for f in self._failures if f[2]] or self._failures
            index, error, _ = min(caused, key=lambda f: plan.needed.index(f[0]))
            self._out.close(index)
            raise error

    def _stage_job(self, index: int, plan: stages.BuildPlan) -> None:
        """One stage on the calling thread: its messages tagged as its own, its result
        or its failure recorded (the first failure cancels the build)."""
        previous = self._out.bind(index)
        try:
            state = self._build_stage(plan.stages[index], plan)
        except BaseException as exc:
            with self._lock:
                # a failure after the cancel is most likely its consequence (a killed RUN)
                first = not self.cancelled.is_set()
                self._failures.append((index, exc, first))
                self.cancelled.set()
            return
        finally:
            self._out.bind(previous)
        with self._lock:
            self._built[index] = state
        self._out.finish(index)

    def _build_stage(self, stage: stages.Stage, plan: stages.BuildPlan) -> _State:
        if self.cancelled.is_set():  # queued behind a stage that failed
            raise BuildFailed("the build was cancelled")
        step = self._first_step[stage.index]
        self.say(f"Step {step}/{self._total} : {stage.from_ins.original}\n")
        state = self._from(stage, plan)
        if state.image_id != "scratch":
            self.say(f" ---> {_short(state.image_id)}\n")
        triggers = list(state.run.get("OnBuild") or [])
        if triggers:
            state.run["OnBuild"] = None
            self.say(
                f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n"
            )
            for trigger in triggers:
                parsed = parser.parse(trigger, "ONBUILD")
                for ins in parsed.instructions:
                    if ins.cmd in ("ONBUILD", "FROM", "MAINTAINER"):
                        raise BuildFailed(f"{ins.cmd} isn't allowed as an ONBUILD trigger")
                    self._instruction(state, ins, announce=False)
        for ins in stage.instructions:
            step += 1
            self.say(f"Step {step}/{self._total} : {ins.original}\n")
            self._instruction(state, ins)
        return state

    def _from(self, stage: stages.Stage, plan: stages.BuildPlan) -> _State:
        platform = expand.platform_args(self.options.platform or None)
        if stage.base_stage is not None:
            built = self._built[stage.base_stage]
            config = copy.deepcopy(built.config)
            image_id, descs = built.image_id, list(built.layers)
        elif stage.scratch:
            host = mf.Platform.host()
            config = {"architecture": host.architecture, "os": host.os, "config": {}}
            if host.variant:
                config["variant"] = host.variant
            config["rootfs"] = {"type": "layers", "diff_ids": []}
            config["history"] = []
            image_id, descs = "scratch", []
        else:
            image = self._image(
                stage.base, stage.platform or self.options.platform, self.options.pull
            )
            config = copy.deepcopy(image.config.data)
            image_id = image.id
            descs = [
                mf.Descriptor(_OCI_OF.get(d.media_type, d.media_type), d.digest, d.size)
                for d in image.layers
            ]
        for key in ("container", "container_config", "parent", "docker_version", "comment"):
            config.pop(key, None)
        run = config.setdefault("config", {}) or {}
        config["config"] = run
        env = list(run.get("Env") or [])
        if not any(e.startswith("PATH=") for e in env):
            env.insert(0, DEFAULT_PATH)
        run["Env"] = env
        scope = expand.StageScope(
            self.options.build_args, plan.meta, env, self._escape(), platform, "Dockerfile"
        )
        return _State(image_id, config, descs, scope)

    def _escape(self) -> str:
        return self._df.escape if self._df is not None else "\\"

    def _image(self, name: str, platform: str, pull: bool) -> Image:
        """An image from the store, pulled when missing (or always with --pull)."""
        if not pull:
            try:
                return self.store.get(name)
            except NotFound:
                pass
        if self._pull is None:
            raise BuildFailed(f"pull access denied for {name}: no such image here")
        try:
            self._pull(name, platform, self._out.sender())
        except BerthError as exc:
            if pull:
                try:
                    return self.store.get(name)
                except NotFound:
                    pass
            raise BuildFailed(f"pull access denied for {name}: {exc}") from None
        return self.store.get(_with_tag(name))

    # ---- instructions ---------------------------------------------------------------------

    def _instruction(self, state: _State, ins: parser.Instruction, announce: bool = True) -> None:
        if self.cancelled.is_set():
            raise BuildFailed("the build was cancelled")
        try:
            step = state.scope.dispatch(ins)
        except BuildError as exc:
            raise BuildFailed(str(exc)) from None
        self._used_build_args.update(k for k in step.used_args if k in self.options.build_args)
        if ins.cmd == "ARG":
            for key, _ in step.pairs:
                if key in self.options.build_args:
                    self._used_build_args.add(key)
        if ins.cmd in _METADATA:
            self._metadata(state, step)
        elif ins.cmd == "RUN":
            self._run(state, step)
        elif ins.cmd in ("COPY", "ADD"):
            self._copy(state, step)
        elif ins.cmd == "WORKDIR":
            self._workdir(state, step)
        else:
            raise BuildFailed(f"unknown instruction: {ins.cmd}")

    # -- results and the cache ---------------------------------------------------------------

    def _hit(self, state: _State, key: str) -> bool:
        if not self.use_cache:
            return False
        found = self.cache.get(key)
        if found is None:
            return False
        try:
            descs = [mf.Descriptor.from_dict(d) for d in found["layers"]]
            config = found["config"]
            image_id = str(found["id"])
        except (KeyError, TypeError, BerthError):
            self.cache.forget(key)
            return False
        if not all(self.store.content.has(d.digest) for d in descs):
            self.cache.forget(key)
            return False
        state.image_id, state.config, state.layers = image_id, config, descs
        self.say(" ---> Using cache\n")
        self.say(f" ---> {_short(image_id)}\n")
        return True

    def _record(
        self,
        state: _State,
        key: str,
        created_by: str,
        layer: tuple[mf.Descriptor, str] | None,
        empty: bool,
    ) -> None:
        """The step's result becomes the stage's current image, and a cache entry."""
        config = state.config
        created = _now(_epoch(self.options.build_args))
        config["created"] = created
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if empty:
            entry["empty_layer"] = True
        config["history"] = [*(config.get("history") or []), entry]
        if layer is not None:
            desc, diff_id = layer
            rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            rootfs["type"] = "layers"
            rootfs["diff_ids"] = [*(rootfs.get("diff_ids") or []), diff_id]
            state.layers = [*state.layers, desc]
        if state.image_id and state.image_id != "scratch":
            config["parent"] = state.image_id
        state.image_id = config_id(config)
        self.cache.put(
            key,
            {"id": state.image_id, "config": config, "layers": [d.to_dict() for d in state.layers]},
        )
        self.say(f" ---> {_short(state.image_id)}\n")

    def _shell(self, state: _State) -> list[str]:
        shell = state.run.get("Shell")
        return list(shell) if shell else list(DEFAULT_SHELL)

    def _nop(self, state: _State, text: str) -> str:
        return " ".join([*self._shell(state), f"#(nop)  {text}"])

    # -- metadata -----------------------------------------------------------------------------

    def _metadata(self, state: _State, step: expand.Expanded) -> None:
        cmd_set = state.cmd_set
        if step.cmd == "CMD":
            state.cmd_set = True
        key = step_key(state.image_id, step.text, step.used_args, f"cmd_set={cmd_set}")
        if self._hit(state, key):
            return
        state.config = copy.deepcopy(state.config)
        run = state.run
        cmd = step.cmd
        ins = step.ins
        if cmd == "ENV":
            env = list(run.get("Env") or [])
            for name, value in step.pairs:
                env = [e for e in env if e.partition("=")[0] != name] + [f"{name}={value or ''}"]
            run["Env"] = env
        elif cmd == "LABEL":
            labels = dict(run.get("Labels") or {})
            labels.update({k: v or "" for k, v in step.pairs})
            run["Labels"] = labels
        elif cmd == "EXPOSE":
            ports = dict(run.get("ExposedPorts") or {})
            for word in step.args:
                ports.update({p: {} for p in _ports(word)})
            run["ExposedPorts"] = ports
        elif cmd == "USER":
            run["User"] = step.args[0] if step.args else ""
        elif cmd == "VOLUME":
            volumes = dict(run.get("Volumes") or {})
            for path in step.args:
                if not path.strip():
                    raise BuildFailed("VOLUME specified can not be an empty string")
                volumes[path] = {}
            run["Volumes"] = volumes
        elif cmd in ("CMD", "ENTRYPOINT"):
            args = list(step.args) if ins.json else [*self._shell(state), *step.args]
            if cmd == "CMD":
                run["Cmd"] = args
            else:
                run["Entrypoint"] = args
                if not cmd_set:
                    run["Cmd"] = None  # a new ENTRYPOINT drops the base image's CMD
        elif cmd == "HEALTHCHECK":
            run["Healthcheck"] = _healthcheck(step)
        elif cmd == "SHELL":
            run["Shell"] = list(step.args)
        elif cmd == "STOPSIGNAL":
            run["StopSignal"] = step.args[0]
        elif cmd == "ONBUILD":
            sub = ins.sub
            run["OnBuild"] = [*(run.get("OnBuild") or []), sub.expression if sub else ""]
        elif cmd == "MAINTAINER":
            state.config["author"] = " ".join(step.args)
        elif cmd == "ARG":
            pass
        self._record(state, key, self._nop(state, step.text), None, empty=True)

    # -- WORKDIR -------------------------------------------------------------------------------

    def _workdir(self, state: _State, step: expand.Expanded) -> None:
        path = step.args[0] if step.args else ""
        if not path:
            raise BuildFailed("WORKDIR cannot be empty")
        base = state.run.get("WorkingDir") or "/"
        workdir = posixpath.normpath(posixpath.join(base, path))
        key = step_key(state.image_id, step.text + "\x00" + workdir, step.used_args)
        if self._hit(state, key):
            return
        state.config = copy.deepcopy(state.config)
        state.run["WorkingDir"] = workdir

        def change(rootfs: str) -> None:
            from berth.runtime.rootfs import secure_join

            target = secure_join(rootfs, workdir)
            if not os.path.isdir(target):
                # dockerd's legacy builder creates it as root whatever USER is
                _mkdir_all(rootfs, target, 0, 0)

        self._filesystem_step(state, key, self._nop(state, f"WORKDIR {workdir}"), change)

    # -- RUN -------------------------------------------------------------------------------------

    def _run(self, state: _State, step: expand.Expanded) -> None:
        ins = step.ins
        if step.options.get("mount") or step.options.get("security") or step.options.get("device"):
            raise BuildFailed("RUN --mount, --security and --device need BuildKit: not supported")
        script: parser.Heredoc | None = None
        if ins.json:
            args = list(step.args)
        elif ins.heredocs:
            args, script = self._heredoc_command(state, step)
        else:
            args = [*self._shell(state), " ".join(step.args)]
        run_args = state.scope.run_args()
        cache_args = step.used_args
        created_by = " ".join(args)
        if script is not None:  # the script is a mounted file: its text keys the step
            created_by = f"{created_by} <<{script.name}\n{script.data}{script.name}"
        if cache_args:
            pairs = " ".join(f"{k}={v}" for k, v in sorted(cache_args.items()))
            created_by = f"|{len(cache_args)} {pairs} {created_by}"
        network = step.options.get("network") or self.options.network
        key = step_key(state.image_id, created_by, cache_args)
        if self._hit(state, key):
            return
        state.config = copy.deepcopy(state.config)
        env = list(state.run.get("Env") or [])
        keys = {e.partition("=")[0] for e in env}
        env += [f"{k}={v}" for k, v in sorted(run_args.items()) if k not in keys]

        def change(rootfs: str) -> None:
            self._run_process(state, rootfs, args, env, str(network), script)

        self._filesystem_step(state, key, created_by, change, is_run=True)

    def _heredoc_command(
        self, state: _State, step: expand.Expanded
    ) -> tuple[list[str], parser.Heredoc | None]:
        """BuildKit's rules: ``RUN <<EOF`` alone runs the document (as a mounted file when
        it starts with ``#!``, else as the shell's script); any other command line gets
        its documents appended, and the shell reads them as its own here-documents."""
        line = " ".join(step.args)
        docs = step.ins.heredocs
        if parser.parse_heredoc(line.strip()) is not None:
            if docs[0].data.startswith("#!"):
                return [*self._shell(state), f"/dev/pipes/{docs[0].name}"], docs[0]
            return [*self._shell(state), docs[0].data], None
        full = line + "".join(f"\n{doc.content}{doc.name}" for doc in docs)
        return [*self._shell(state), full], None

    def _run_process(
        self,
        state: _State,
        rootfs: str,
        args: list[str],
        env: list[str],
        network: str,
        script: parser.Heredoc | None = None,
    ) -> None:
        from berth.engine import specgen

        cid = uuid.uuid4().hex + uuid.uuid4().hex
        self.say(f" ---> Running in {cid[:12]}\n")
        bundle = os.path.join(self.work_root, "bundles", cid)
        os.makedirs(bundle, mode=0o700)
        mode = network or "default"
        sandbox: Sandbox | None = None
        try:
            if mode not in ("host", "none") and self.networks is not None:
                sandbox = self.networks.acquire(cid, mode, cid[:12], self.options.extra_hosts)
            elif mode not in ("host", "none"):
                mode = "host"  # no daemon to make a network stack
            files = self._init_files(bundle, cid, sandbox)
            spec = specgen.ContainerSpec(
                image="",
                image_id=state.image_id,
                entrypoint=[],
                cmd=args,
                env=env,
                working_dir=state.run.get("WorkingDir") or "/",
                user=state.run.get("User") or "",
                hostname=cid[:12],
                network_mode="host" if mode == "host" else "none",
                shm_size=self.options.shm_size or specgen.SHM_SIZE,
            )
            try:
                config = specgen.oci_config(
                    spec,
                    container_id=cid,
                    rootfs=rootfs,
                    hostname_file=files[0],
                    hosts_file=files[1],
                    resolv_file=files[2],
                    namespace_paths={"network": sandbox.netns} if sandbox else None,
                )
            except BerthError as exc:
                raise BuildFailed(str(exc)) from None
            config["linux"]["cgroupsPath"] = f"/berth/build-{cid[:12]}"
            if mode == "host":
                config["hostname"] = cid[:12]
            if script is not None:
                path = os.path.join(bundle, "pipes", script.name)
                os.makedirs(os.path.dirname(path))
                with open(path, "w") as f:
                    f.write(script.data)
                os.chmod(path, 0o755)
                config["mounts"].append(
                    {
                        "destination": f"/dev/pipes/{script.name}",
                        "type": "bind",
                        "source": path,
                        "options": ["rbind", "ro"],
                    }
                )
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(config, f)
            code = self._spawn(cid, bundle)
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
            if sandbox is not None and self.networks is not None:
                self.networks.release(cid)
        if code != 0:
            raise BuildFailed(
                f"The command '{' '.join(args)}' returned a non-zero code: {code}", code
            )

    def _init_files(self, bundle: str, cid: str, sandbox: Sandbox | None) -> tuple[str, str, str]:
        hostname = os.path.join(bundle, "hostname")
        hosts = os.path.join(bundle, "hosts")
        resolv = os.path.join(bundle, "resolv.conf")
        with open(hostname, "w") as f:
            f.write(cid[:12] + "\n")
        if sandbox is not None:
            with open(hosts, "w") as f:
                f.write(sandbox.hosts)
            with open(resolv, "w") as f:
                f.write(sandbox.resolv)
            return hostname, hosts, resolv
        lines = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "fe00::0\tip6-localnet",
            "ff00::0\tip6-mcastprefix",
            "ff02::1\tip6-allnodes",
            "ff02::2\tip6-allrouters",
        ]
        for item in self.options.extra_hosts:
            name, sep, address = item.partition(":")
            if not sep:
                name, _, address = item.partition("=")
            if name and address:
                lines.append(f"{address}\t{name}")
        with open(hosts, "w") as f:
            f.write("\n".join(lines) + "\n")
        try:
            with open("/etc/resolv.conf") as f:
                text = f.read()
        except OSError:
            text = ""
        if "127.0.0." in text or not text.strip():
            text = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        with open(resolv, "w") as f:
            f.write(text)
        return hostname, hosts, resolv

    def _spawn(self, cid: str, bundle: str) -> int:
        """Run the container under berth-runtime in a child process; stream its output."""
        command = [
            sys.executable,
            "-m",
            "berth.runtime.cli",
            "--root",
            self.runtime_root,
            "run",
            "--bundle",
            bundle,
            cid,
        ]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ, False)
        selector.register(proc.stderr, selectors.EVENT_READ, True)
        open_streams = 2
        killed = False
        try:
            while open_streams:
                if self.cancelled.is_set() and not killed:
                    killed = True
                    self._kill(proc, cid)
                for key, _ in selector.select(0.5):
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fileobj)
                        open_streams -= 1
                        continue
                    text = data.decode("utf-8", "replace")
                    if key.data:
                        self.say(f"\x1b[91m{text}\x1b[0m")
                    else:
                        self.say(text)
            return proc.wait()
        except BaseException:
            self._kill(proc, cid)
            raise
        finally:
            selector.close()
            proc.stdout.close()
            proc.stderr.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _kill(self, proc: subprocess.Popen[bytes], cid: str) -> None:
        """Stop a RUN step: its processes are killed, and the runtime process waiting
        for them deletes the container and its cgroup as after any exit. Only if it does
        not end in time are both forced (deleting beside it, or killing it in the middle
        of its own delete, left cgroups half removed)."""
        from berth.runtime.container import Runtime

        runtime = Runtime(self.runtime_root)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                runtime.kill(cid, signal.SIGKILL, all_processes=True)
            except BerthError:
                pass  # not started yet, or gone already
            try:
                proc.wait(0.2)
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            runtime.delete(cid, force=True)  # what the runtime could not (normally nothing)
        except BerthError:
            pass

    # -- COPY / ADD --------------------------------------------------------------------------------

    def _copy(self, state: _State, step: expand.Expanded) -> None:
        ins = step.ins
        is_add = ins.cmd == "ADD"
        urls = [src for src in step.sources if is_add and _is_url(src)]
        local = [src for src in step.sources if src not in urls]
        for src in local:
            if src.startswith("git@") or src.endswith(".git"):
                raise BuildFailed(f"ADD of a git repository ({src}) is not supported")
        checksum = str(step.options.get("checksum") or "")
        if checksum and (len(urls) != 1 or local):
            raise BuildFailed("checksum can't be specified for non-HTTP(S) sources")
        source_from = str(step.options.get("from") or "")
        chown = str(step.options.get("chown") or "")
        chmod_text = str(step.options.get("chmod") or "")
        chmod: int | None = None
        if chmod_text:
            try:
                chmod = int(chmod_text, 8)
            except ValueError:
                raise BuildFailed(f"invalid --chmod={chmod_text}: use an octal mode") from None
        if not step.sources and not step.heredocs:
            raise BuildFailed(f"{ins.cmd} requires at least two arguments")
        workdir = state.run.get("WorkingDir") or "/"
        dest = step.dest
        dest_is_dir = dest.endswith("/") or dest.endswith("/.") or dest in (".", "")
        dest_abs = posixpath.normpath(posixpath.join(workdir, dest))
        view: tuple[str, str | None] | None = None
        downloads = ""
        try:
            if source_from:
                source_root, source_id, view = self._source_root(source_from)
            else:
                assert self.context is not None
                source_root, source_id = self.context.root, ""
            infos = self._sources(source_root, local, ins.cmd)
            url_hash = ""
            if urls:
                downloads = os.path.join(self.work_root, "mounts", f"build-add-{uuid.uuid4().hex}")
                os.makedirs(downloads, mode=0o700)
                for url in urls:
                    name, path, digest = _download(url, downloads, checksum)
                    infos.append((name, os.lstat(path), path))
                    url_hash += f"{url}\x00{digest}\n"
            count = len(infos) + len(step.heredocs)
            wildcard = any(_has_glob(s) for s in local)
            if (count > 1 or (wildcard and count != 1)) and not dest_is_dir:
                raise BuildFailed(
                    f"When using {ins.cmd} with more than one source file, the destination must"
                    " be a directory and end with a /"
                )
            content = (
                f"from={source_id}"
                if source_from
                else self._content_hash(source_root, infos[: len(infos) - len(urls)])
            ) + url_hash
            heredoc_hash = hashlib.sha256(
                json.dumps([[d.name, d.data] for d in step.heredocs]).encode()
            ).hexdigest()
            key = step_key(
                state.image_id,
                step.text + "\x00" + workdir,
                step.used_args,
                content + heredoc_hash,
            )
            if self._hit(state, key):
                return
            state.config = copy.deepcopy(state.config)

            def change(rootfs: str) -> None:
                from berth.runtime.rootfs import secure_join

                uid, gid = self._identity(rootfs, chown) if chown else (0, 0)
                # COPY --from keeps the source's owners unless --chown (legacy builder)
                keep = bool(source_from) and not chown
                for rel, st, real in infos:
                    src_path = os.path.join(source_root, real) if real else source_root
                    if stat.S_ISDIR(st.st_mode):
                        target = secure_join(rootfs, dest_abs)
                        _mkdir_all(rootfs, target, uid, gid)
                        _copy_tree(src_path, target, rootfs, uid, gid, chmod, keep)
                        continue
                    name = posixpath.basename(rel) if rel else posixpath.basename(source_root)
                    if (
                        is_add
                        and stat.S_ISREG(st.st_mode)
                        and not source_from
                        and not os.path.isabs(real)  # a download is never unpacked
                        and _extract_archive(src_path, rootfs, dest_abs, uid, gid)
                    ):
                        continue
                    target_path = dest_abs
                    existing = secure_join(rootfs, dest_abs)
                    if dest_is_dir or os.path.isdir(existing):
                        target_path = posixpath.join(dest_abs, name)
                    target = secure_join(rootfs, target_path)
                    _mkdir_all(rootfs, os.path.dirname(target), uid, gid)
                    _copy_entry(src_path, target, st, uid, gid, chmod, keep)
                for doc in step.heredocs:
                    target_path = posixpath.join(dest_abs, doc.name) if dest_is_dir else dest_abs
                    target = secure_join(rootfs, target_path)
                    _mkdir_all(rootfs, os.path.dirname(target), uid, gid)
                    _replace(target)
                    with open(target, "w") as f:
                        f.write(doc.data)
                    os.chown(target, uid, gid)
                    os.chmod(target, chmod if chmod is not None else 0o644)

            text = f"{ins.cmd} {' '.join(step.sources + [f'<<{d.name}' for d in step.heredocs])}"
            self._filesystem_step(state, key, self._nop(state, f"{text} in {dest_abs} "), change)
        finally:
            if view is not None:
                self._release_view(*view)
            if downloads:
                shutil.rmtree(downloads, ignore_errors=True)

    def _sources(self, root: str, sources: list[str], cmd: str) -> list[_Source]:
        """The source entries of COPY/ADD, globs expanded: (relative path as named, stat,
        relative path read). A source named explicitly that is a symlink is followed
        inside the root, as dockerd's FollowSymlinkInScope: its content is copied under
        the link's name."""
        from berth.runtime.rootfs import secure_join

        out: list[_Source] = []
        for src in sources:
            normal = posixpath.normpath(src.lstrip("/") or ".")
            rel = None if normal == ".." or normal.startswith("../") else clean_rel(src)
            if rel is None:
                raise BuildFailed(f"Forbidden path outside the build context: {src} ()")
            if _has_glob(rel):
                matches = _glob(root, rel)
                if not matches:
                    raise BuildFailed(f"{cmd} failed: no source files were specified")
                out += [(m, st, m) for m, st in matches]
                continue
            path = os.path.join(root, rel) if rel else root
            try:
                st = os.lstat(path)
                real = os.path.realpath(path)
                base = os.path.realpath(root)
                if (
                    real != base
                    and not real.startswith(base + "/")
                    and not stat.S_ISLNK(st.st_mode)
                ):
                    raise BuildFailed(f"Forbidden path outside the build context: {src} ()")
            except (FileNotFoundError, NotADirectoryError):
                raise BuildFailed(
                    f"{cmd} failed: file not found in build context or excluded by"
                    f" .dockerignore: stat {rel or '.'}: file does not exist"
                ) from None
            real = rel
            if stat.S_ISLNK(st.st_mode):
                resolved = secure_join(os.path.realpath(root), rel)
                try:
                    st = os.lstat(resolved)
                except (FileNotFoundError, NotADirectoryError):
                    raise BuildFailed(
                        f"{cmd} failed: file not found in build context or excluded by"
                        f" .dockerignore: stat {rel}: file does not exist"
                    ) from None
                real = os.path.relpath(resolved, os.path.realpath(root))
                real = "" if real == "." else real
            out.append((rel, st, real))
        return out

    def _content_hash(self, root: str, infos: list[_Source]) -> str:
        """Contents, modes and types of everything copied; never mtimes or owners
        (the copy's owner is --chown, part of the instruction text)."""
        assert self.context is not None
        digest = hashlib.sha256()
        for named, st, rel in infos:
            digest.update(f"{named}\x00".encode())
            entries = [(rel, st)]
            if stat.S_ISDIR(st.st_mode):
                entries += _walk(root, rel)
            for path, est in entries:
                mode = est.st_mode
                digest.update(
                    f"{path}\x00{stat.S_IFMT(mode)}\x00{stat.S_IMODE(mode):o}\x00".encode()
                )
                full = os.path.join(root, path) if path else root
                if stat.S_ISREG(mode):
                    digest.update(self.context.digest_of(path).encode())
                elif stat.S_ISLNK(mode):
                    digest.update(os.readlink(full).encode())
                digest.update(b"\n")
        return digest.hexdigest()

    def _source_root(self, ref: str) -> tuple[str, str, tuple[str, str | None]]:
        """COPY --from: a built stage (name or index) or an image, as a read-only view."""
        plan = self._plan
        assert plan is not None
        state: _State | None = None
        found = plan.stage(ref)
        if found is not None and found.index in self._built:
            state = self._built[found.index]
        if state is not None:
            top, source_id = state.chain_top, state.image_id
            self._ensure_snapshots(state.config, state.layers)
        else:
            image = self._image(ref, self.options.platform, False)
            top, source_id = image.top_layer, image.id
        key = f"build-view-{uuid.uuid4().hex}"
        target = os.path.join(self.work_root, "mounts", key)
        os.makedirs(target, mode=0o700)
        if top is None:
            return target, source_id, (target, None)
        mounts = self.store.snapshots.view(key, top)
        try:
            for m in mounts:
                m.mount(target)
        except BaseException:
            self.store.snapshots.remove(key)
            os.rmdir(target)
            raise
        return target, source_id, (target, key)

    def _release_view(self, target: str, key: str | None) -> None:
        if key is not None:
            _umount(target)
            self.store.snapshots.remove(key)
        os.rmdir(target)

    # -- identity ---------------------------------------------------------------------------

    def _identity(self, rootfs: str, user: str, for_workdir: bool = False) -> tuple[int, int]:
        """--chown (or USER for WORKDIR) through the image's /etc/passwd and /etc/group."""
        if not user:
            return 0, 0
        name, sep, group = user.partition(":")
        passwd = _read_db(rootfs, "etc/passwd")
        groups = _read_db(rootfs, "etc/group")
        if name.isdigit():
            uid = int(name)
            primary = next((int(e[3]) for e in passwd if len(e) > 3 and e[2] == name), uid)
        else:
            entry = next((e for e in passwd if e[0] == name and len(e) > 3), None)
            if entry is None:
                if for_workdir:
                    return 0, 0
                raise BuildFailed(
                    "unable to convert uid/gid chown string to host mapping: can't find uid"
                    f" for user {name}: no such user: {name}"
                )
            uid, primary = int(entry[2]), int(entry[3])
        if for_workdir and not sep:
            return uid, primary
        group = group if sep else name
        if group.isdigit():
            return uid, int(group)
        found = next((int(e[2]) for e in groups if e[0] == group and len(e) > 2), None)
        if found is None:
            if not sep:
                return uid, uid if name.isdigit() else primary
            raise BuildFailed(
                "unable to convert uid/gid chown string to host mapping: can't find gid"
                f" for group {group}: no such group: {group}"
            )
        return uid, found

    # -- a step that changes files ------------------------------------------------------------

    def _filesystem_step(
        self,
        state: _State,
        key: str,
        created_by: str,
        change: Callable[[str], None],
        is_run: bool = False,
    ) -> None:
        """Prepare a snapshot on the chain, mount it, ``change`` it, and keep its diff as
        the step's layer (committed under its ChainID). Nothing stays behind on error."""
        self._ensure_snapshots(state.config, state.layers)
        snap = f"build-{uuid.uuid4().hex}"
        target = os.path.join(self.work_root, "mounts", snap)
        os.makedirs(target, mode=0o700)
        snapshots = self.store.snapshots
        mounted = committed = False
        try:
            mounts = snapshots.prepare(snap, state.chain_top, labels={"berth.build": "1"})
            for m in mounts:
                m.mount(target)
            mounted = True
            try:
                change(target)
            finally:
                _umount(target)
                mounted = False
            upper = snapshots.fs_path(snap)
            if is_run:
                _drop_init_entries(upper, self._lower_dirs(state))
            with self.store.content.writer() as writer:
                digest, diff_id, size = layers.write_layer(
                    upper,
                    cast(BinaryIO, BlobFile(writer)),
                    source_date_epoch=_epoch(self.options.build_args),
                )
                stored = writer.commit()
            if stored != digest:
                raise BuildFailed(f"the layer was stored as {stored}, not {digest}")
            if diff_id == EMPTY_TAR_DIFF_ID:
                self._record(state, key, created_by, None, empty=True)
                return
            chain = mf.chain_ids([*state.diff_ids, diff_id])[-1]
            if not snapshots.exists(chain):
                try:
                    snapshots.commit(chain, snap, labels={"berth.layer": digest})
                    committed = True
                except Conflict:
                    pass
            self._record(
                state,
                key,
                created_by,
                (mf.Descriptor(mf.OCI_LAYER_GZIP, digest, size), diff_id),
                empty=False,
            )
        finally:
            if mounted:
                _umount(target)
            if not committed and snapshots.exists(snap):
                snapshots.remove(snap)
            try:
                os.rmdir(target)
            except OSError:
                pass

    def _lower_dirs(self, state: _State) -> list[str]:
        out = []
        for chain_id in reversed(mf.chain_ids(state.diff_ids)):
            try:
                out.append(self.store.snapshots.fs_path(chain_id))
            except NotFound:
                continue
        return out

    def _ensure_snapshots(self, config: dict[str, Any], descs: list[mf.Descriptor]) -> None:
        """A cached result's chain may have been collected: unpack it again from blobs."""
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        chain = mf.chain_ids(diff_ids)
        if not chain or self.store.snapshots.exists(chain[-1]):
            return
        parsed = mf.ImageConfig(config)
        manifest = mf.Manifest(
            mf.OCI_MANIFEST, mf.Descriptor(mf.OCI_CONFIG, parsed.digest, 0), descs
        )
        self.store.unpack(Image(parsed.digest, [], "", manifest, parsed, None, time.time()))


# ---- helpers -------------------------------------------------------------------------------


def _familiar(tag: str) -> str:
    from berth.images.reference import parse

    ref = parse(tag)
    if ref.tag is None and ref.digest is None:
        ref = ref.with_tag("latest")
    return ref.familiar_string


def normal_tag(tag: str) -> str:
    """A ``-t`` as the store keeps it (``:latest`` added); a bad one is refused before
    the build starts."""
    from berth.images.reference import parse

    try:
        ref = parse(tag)
    except BerthError as exc:
        raise InvalidArgument(f"invalid reference format: {tag}: {exc}") from None
    if ref.digest is not None:
        raise InvalidArgument(f"invalid tag {tag}: a build cannot be tagged with a digest")
    return str(ref if ref.tag else ref.with_tag("latest"))


def _with_tag(name: str) -> str:
    return normal_tag(name)


def _ports(word: str) -> list[str]:
    number, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    low, dash, high = number.partition("-")
    if not low.isdigit() or (dash and not high.isdigit()):
        raise BuildFailed(f"Invalid containerPort: {word}")
    if dash:
        return [f"{p}/{proto}" for p in range(int(low), int(high) + 1)]
    return [f"{int(low)}/{proto}"]


def _healthcheck(step: expand.Expanded) -> dict[str, Any]:
    from berth.images.changes import parse_go_duration

    ins = step.ins
    kind = (ins.args[0] if ins.args else "").upper()
    if kind == "NONE":
        return {"Test": ["NONE"]}
    rest = ins.args[1:]
    test = ["CMD", *rest] if ins.json else ["CMD-SHELL", " ".join(rest)]
    out: dict[str, Any] = {"Test": test}
    for flag, name in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ):
        value = step.options.get(flag)
        if isinstance(value, str) and value:
            out[name] = parse_go_duration(value)
    retries = step.options.get("retries")
    if isinstance(retries, str) and retries:
        out["Retries"] = int(retries)
    return out


def _is_url(src: str) -> bool:
    return src.split("://", 1)[0] in ("http", "https") and "://" in src


DOWNLOAD_TIMEOUT = 300.0


def _download(url: str, folder: str, checksum: str) -> tuple[str, str, str]:
    """ADD <url>: fetched by the daemon into ``folder`` as Docker does (mode 0600, the
    Last-Modified time as mtime, named after the URL's last path element); the
    ``--checksum`` verified. Returns (name, path, sha256 digest)."""
    import email.utils
    import urllib.error
    import urllib.parse
    import urllib.request

    algo, _, want = checksum.partition(":")
    if checksum and (algo != "sha256" or len(want) != 64):
        raise BuildFailed(f"invalid checksum {checksum}: only sha256:<64 hex digits> is supported")
    name = posixpath.basename(urllib.parse.urlsplit(url).path.rstrip("/")) or "__unnamed__"
    path = os.path.join(folder, uuid.uuid4().hex)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            modified = response.headers.get("Last-Modified")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise BuildFailed(f"failed to download {url}: {reason}") from None
    got = digest.hexdigest()
    if checksum and got != want.lower():
        raise BuildFailed(f"digest mismatch {checksum}: sha256:{got}")
    os.chmod(path, 0o600)
    if modified:
        try:
            when = email.utils.parsedate_to_datetime(modified).timestamp()
            os.utime(path, (when, when))
        except (TypeError, ValueError, OverflowError):
            pass
    return name, path, f"sha256:{got}"


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _walk(root: str, rel: str) -> list[tuple[str, os.stat_result]]:
    """Everything under ``root/rel`` (relative paths, lstat), sorted, parents first."""
    out: list[tuple[str, os.stat_result]] = []
    base = os.path.join(root, rel) if rel else root
    stack = [(base, rel)]
    while stack:
        top, prefix = stack.pop()
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name, reverse=True)
        for entry in entries:
            path = f"{prefix}/{entry.name}" if prefix else entry.name
            st = entry.stat(follow_symlinks=False)
            out.append((path, st))
            if stat.S_ISDIR(st.st_mode):
                stack.append((entry.path, path))
    out.sort(key=lambda item: item[0].split("/"))
    return out


def _glob(root: str, pattern: str) -> list[tuple[str, os.stat_result]]:
    """Docker's filepath.Match against every path of the context (``*`` stays in a
    path element); the matches in order."""
    parts = pattern.split("/")
    found: list[tuple[str, os.stat_result]] = []
    for path, st in _walk(root, ""):
        names = path.split("/")
        if len(names) != len(parts):
            continue
        if all(fnmatch.fnmatchcase(n, p) for n, p in zip(names, parts, strict=True)):
            found.append((path, st))
    return found


def _read_db(rootfs: str, rel: str) -> list[list[str]]:
    try:
        with open(os.path.join(rootfs, rel)) as f:
            return [line.rstrip("\n").split(":") for line in f if line.count(":") >= 2]
    except OSError:
        return []


def _mkdir_all(rootfs: str, target: str, uid: int, gid: int) -> None:
    """mkdir -p inside the rootfs: new directories 0755, owned by the copy's owner."""
    missing = []
    path = target
    while not os.path.lexists(path) and path.startswith(rootfs) and path != rootfs:
        missing.append(path)
        path = os.path.dirname(path)
    for path in reversed(missing):
        os.mkdir(path, 0o755)
        os.chown(path, uid, gid)
        os.chmod(path, 0o755)


def _replace(target: str) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise BuildFailed(f"cannot replace directory {target} with a file")
    os.unlink(target)


def _copy_entry(
    src: str,
    target: str,
    st: os.stat_result,
    uid: int,
    gid: int,
    chmod: int | None,
    keep: bool = False,
) -> None:
    """One entry; ``keep``: the source's owners (COPY --from without --chown)."""
    if keep:
        uid, gid = st.st_uid, st.st_gid
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        if not os.path.isdir(target):
            _replace(target)
            os.mkdir(target, 0o700)
        os.chown(target, uid, gid)
        os.chmod(target, chmod if chmod is not None else stat.S_IMODE(mode))
        os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns))
        return
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    _replace(target)
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), target)
        os.lchown(target, uid, gid)
        os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
        return
    if not stat.S_ISREG(mode):
        return  # devices, fifos, sockets: Docker's COPY skips them too
    with open(src, "rb") as fin:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    os.chown(target, uid, gid)
    os.chmod(target, chmod if chmod is not None else stat.S_IMODE(mode))
    os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns))


def _copy_tree(
    src: str,
    target: str,
    rootfs: str,
    uid: int,
    gid: int,
    chmod: int | None,
    keep: bool = False,
) -> None:
    """A directory's contents into ``target`` (the directory itself is not copied)."""
    from berth.runtime.rootfs import secure_join

    entries = _walk(src, "")
    dirs: list[tuple[str, os.stat_result]] = []
    rel_target = "/" + os.path.relpath(target, rootfs)
    for rel, st in entries:
        dest = secure_join(rootfs, posixpath.join(rel_target, rel))
        _copy_entry(os.path.join(src, rel), dest, st, uid, gid, chmod, keep)
        if stat.S_ISDIR(st.st_mode):
            dirs.append((dest, st))
    for dest, st in reversed(dirs):  # children changed their parents' mtimes
        os.utime(dest, ns=(st.st_mtime_ns, st.st_mtime_ns))


def _extract_archive(src: str, rootfs: str, dest_abs: str, uid: int, gid: int) -> bool:
    """ADD of a local tar (plain, gzip, bzip2, xz): unpacked into the destination
    directory, with the archive's owners and modes. False when it is not a tar."""
    from berth.runtime.rootfs import secure_join

    try:
        tar = tarfile.open(src, "r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError, EOFError):
        return False
    with tar:
        base = secure_join(rootfs, dest_abs)
        _mkdir_all(rootfs, base, uid, gid)
        for member in tar:
            rel = clean_rel(member.name)
            if not rel:
                continue
            target = secure_join(rootfs, posixpath.join(dest_abs, rel))
            _mkdir_all(rootfs, os.path.dirname(target), 0, 0)
            if member.isdir():
                if not os.path.isdir(target):
                    _replace(target)
                    os.mkdir(target, 0o755)
            elif member.isreg():
                if os.path.isdir(target):
                    shutil.rmtree(target)
                _replace(target)
                source = tar.extractfile(member)
                assert source is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            elif member.issym():
                _replace(target)
                os.symlink(member.linkname, target)
            elif member.islnk():
                link = clean_rel(member.linkname)
                if not link:
                    continue
                _replace(target)
                os.link(secure_join(rootfs, posixpath.join(dest_abs, link)), target)
            else:
                continue
            os.lchown(target, member.uid, member.gid)
            if not member.issym():
                os.chmod(target, member.mode & 0o7777)
                os.utime(target, (member.mtime, member.mtime))
    return True


def _umount(target: str) -> None:
    from berth.linux import syscalls as sc

    try:
        sc.umount2(target, 0)
    except OSError:
        sc.umount2(target, sc.MNT_DETACH)


def _drop_init_entries(upper: str, lowers: list[str]) -> None:
    """The mount points a RUN container needs (/etc/hosts..., and /etc, /proc... when
    the image lacks them) are Docker's init layer, never part of the step's layer."""
    for rel in INIT_FILES:
        path = os.path.join(upper, rel)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
    for rel in INIT_DIRS:
        path = os.path.join(upper, rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode) or os.listdir(path):
            continue
        try:
            xattrs = os.listxattr(path, follow_symlinks=False)
        except OSError:
            xattrs = []
        if any(x.endswith("overlay.opaque") for x in xattrs):
            continue
        lower = next(
            (os.path.join(d, rel) for d in lowers if os.path.lexists(os.path.join(d, rel))), None
        )
        if lower is not None:
            lst = os.lstat(lower)
            if (lst.st_mode, lst.st_uid, lst.st_gid) != (st.st_mode, st.st_uid, st.st_gid):
                continue  # the step changed it: keep it
        os.rmdir(path)


def file_hash(path: str) -> str:
    return file_digest(path)
