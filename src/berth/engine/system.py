"""``/version``, ``/info`` and ``/system/df``: what the daemon and this host are."""

from __future__ import annotations

import os
import platform
import socket
import stat
from collections.abc import Callable
from typing import Any

from berth import __version__ as _berth_version
from berth.engine.stats import host_memory

API_VERSION = "1.45"
MIN_API_VERSION = "1.24"
VERSION = str(_berth_version) if _berth_version else "0.1.0"
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def arch() -> str:
    machine = platform.machine()
    return GO_ARCH.get(machine, machine)


def version() -> dict[str, Any]:
    kernel = platform.release()
    details = {
        "ApiVersion": API_VERSION,
        "Arch": arch(),
        "GitCommit": "",
        "GoVersion": "python" + platform.python_version(),
        "KernelVersion": kernel,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
        "Experimental": "false",
    }
    return {
        "Platform": {"Name": "Berth Engine"},
        "Components": [
            {"Name": "Engine", "Version": VERSION, "Details": details},
            {"Name": "berth-runtime", "Version": VERSION, "Details": {"GitCommit": ""}},
        ],
        "Version": VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": details["GoVersion"],
        "Os": "linux",
        "Arch": arch(),
        "KernelVersion": kernel,
        "BuildTime": "",
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def info(*, root: str, counts: dict[str, int], images: int, listeners: int = 0) -> dict[str, Any]:
    from berth.linux import cgroups

    mode = cgroups.detect_mode()
    return {
        "ID": "",
        **counts,
        "Images": images,
        "Driver": "overlay",
        "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]],
        "Plugins": {
            "Volume": [],
            "Network": ["host", "none"],
            "Authorization": None,
            "Log": ["json-file"],
        },
        "MemoryLimit": True,
        "SwapLimit": True,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "CPUSet": True,
        "PidsLimit": True,
        "IPv4Forwarding": True,
        "Debug": False,
        "NFd": len(os.listdir("/proc/self/fd")),
        "OomKillDisable": False,
        "NGoroutines": 0,
        "SystemTime": _now(),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": "2" if mode == "v2" else "1",
        "NEventsListener": listeners,
        "KernelVersion": platform.release(),
        "OperatingSystem": _os_name(),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": platform.machine(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8"]},
        "NCPU": os.cpu_count() or 1,
        "MemTotal": host_memory(),
        "DockerRootDir": root,
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": socket.gethostname(),
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": VERSION,
        "Runtimes": {"berth-runtime": {"path": "berth-runtime"}},
        "DefaultRuntime": "berth-runtime",
        "Swarm": {
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "NodeID": "",
            "NodeAddr": "",
            "RemoteManagers": None,
            "Nodes": 0,
            "Managers": 0,
        },
        "LiveRestoreEnabled": True,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": [
            "name=seccomp,profile=builtin",
            *(["name=cgroupns"] if mode == "v2" else []),
        ],
        "Warnings": [],
    }


def _now() -> str:
    from berth.engine.jsonlog import rfc3339nano

    return rfc3339nano()


DF_TYPES = ("container", "image", "volume", "build-cache")


def content_size(path: str) -> int:
    """Bytes of the files under ``path`` as Docker counts volumes and writable layers
    (moby's ``directory.Size``): apparent sizes, folders not counted, hard links once;
    0 if it is gone."""
    total = 0
    seen: set[int] = set()
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) or st.st_size == 0 or st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_size
    return total


def disk_usage(
    *,
    images: list[dict[str, Any]],
    layers: dict[str, list[tuple[str, int]]],
    containers: list[dict[str, Any]],
    container_dirs: dict[str, str],
    volumes: Callable[[], list[dict[str, Any]]],
    types: set[str],
) -> dict[str, Any]:
    """``GET /system/df``. ``layers``: image id -> its layers (digest, size);
    ``container_dirs``: container id -> the folder of its writable layer. Walks the
    filesystem: call it from a worker thread."""
    result: dict[str, Any] = {
        "LayersSize": 0,
        "Images": None,
        "Containers": None,
        "Volumes": None,
        "BuildCache": None,
    }
    wanted = types or set(DF_TYPES)
    if "image" in wanted:
        uses: dict[str, int] = {}
        unique: dict[str, int] = {}
        for image_layers in layers.values():
            for digest, size in set(image_layers):
                uses[digest] = uses.get(digest, 0) + 1
                unique[digest] = size
        result["LayersSize"] = sum(unique.values())
        rows = []
        for image in images:
            own = set(layers.get(image["Id"], []))
            rows.append({**image, "SharedSize": sum(s for d, s in own if uses[d] > 1)})
        result["Images"] = rows
    if "container" in wanted:
        sizes = {image["Id"]: image["Size"] for image in images}
        rows = []
        for container in containers:
            directory = container_dirs.get(container["Id"])
            size_rw = content_size(directory) if directory else 0
            rows.append(
                {
                    **container,
                    "SizeRw": size_rw,
                    "SizeRootFs": size_rw + sizes.get(container["ImageID"], 0),
                }
            )
        result["Containers"] = rows
    if "volume" in wanted:
        result["Volumes"] = volumes()
    if "build-cache" in wanted:
        result["BuildCache"] = []
    return result
