"""Create and update bodies are read as dockerd reads them: keys case-insensitively."""

from berth.api import casing


def test_config_and_host_config_keys_fold_to_the_api_spelling() -> None:
    body = casing.container_body(
        {"image": "busybox", "CMD": ["true"], "HostConfig": {"CPURealtimePeriod": 1000,
         "cpurealtimeruntime": 500, "Unknown": 1}}
    )  # fmt: skip
    assert body == {
        "Image": "busybox",
        "Cmd": ["true"],
        "HostConfig": {"CpuRealtimePeriod": 1000, "CpuRealtimeRuntime": 500, "Unknown": 1},
    }


def test_the_exact_spelling_wins_over_a_differently_cased_duplicate() -> None:
    assert casing.host_config({"memory": 1, "Memory": 2}) == {"Memory": 2}
    assert casing.host_config({"Memory": 2, "memory": 1}) == {"Memory": 2}
