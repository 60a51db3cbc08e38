"""Field names as dockerd reads them: Go's encoding/json matches keys case-insensitively,
so clients get away with ``CPURealtimePeriod`` for ``CpuRealtimePeriod`` (docker-py does).

Only the top-level keys of a container's config and its HostConfig are folded to the
Engine API's spelling; unknown keys pass through unchanged.
"""

from __future__ import annotations

from typing import Any

CONFIG_FIELDS = [
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "Shell",
    "HostConfig",
    "NetworkingConfig",
]

HOST_CONFIG_FIELDS = [
    "Binds",
    "ContainerIDFile",
    "LogConfig",
    "NetworkMode",
    "PortBindings",
    "RestartPolicy",
    "AutoRemove",
    "VolumeDriver",
    "VolumesFrom",
    "ConsoleSize",
    "Annotations",
    "CapAdd",
    "CapDrop",
    "CgroupnsMode",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "IpcMode",
    "Cgroup",
    "Links",
    "OomScoreAdj",
    "PidMode",
    "Privileged",
    "PublishAllPorts",
    "ReadonlyRootfs",
    "SecurityOpt",
    "StorageOpt",
    "Tmpfs",
    "UTSMode",
    "UsernsMode",
    "ShmSize",
    "Sysctls",
    "Runtime",
    "Isolation",
    "CpuShares",
    "Memory",
    "NanoCpus",
    "CgroupParent",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpusetCpus",
    "CpusetMems",
    "Devices",
    "DeviceCgroupRules",
    "DeviceRequests",
    "KernelMemory",
    "KernelMemoryTCP",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "OomKillDisable",
    "Init",
    "PidsLimit",
    "Ulimits",
    "CpuCount",
    "CpuPercent",
    "IOMaximumIOps",
    "IOMaximumBandwidth",
    "MaskedPaths",
    "ReadonlyPaths",
    "Mounts",
]

_CONFIG = {name.lower(): name for name in CONFIG_FIELDS}
_HOST_CONFIG = {name.lower(): name for name in HOST_CONFIG_FIELDS}


def _fold(data: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    folded: dict[str, Any] = {}
    for key, value in data.items():
        canonical = names.get(key.lower(), key) if isinstance(key, str) else key
        if canonical in folded and canonical != key:
            continue  # the exact spelling wins over a differently cased duplicate
        folded[canonical] = value
    return folded


def container_body(body: dict[str, Any]) -> dict[str, Any]:
    """A create body with its config and HostConfig keys in the API's spelling."""
    folded = _fold(body, _CONFIG)
    host_config = folded.get("HostConfig")
    if isinstance(host_config, dict):
        folded["HostConfig"] = _fold(host_config, _HOST_CONFIG)
    return folded


def host_config(body: dict[str, Any]) -> dict[str, Any]:
    """An update body (HostConfig fields at the top level) in the API's spelling."""
    return _fold(body, _HOST_CONFIG)
