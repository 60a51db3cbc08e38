"""The runtime's pure logic: spec checks, path resolution, flags, signals, the stub."""

from __future__ import annotations

import copy
import json
import os
import signal
import struct
from pathlib import Path

import pytest

from berth.errors import ConfigError, InvalidArgument
from berth.linux import capabilities, execstub
from berth.linux import syscalls as sc
from berth.runtime import cli, spec
from berth.runtime.container import parse_signal
from berth.runtime.flags import parse
from berth.runtime.rootfs import parse_options, secure_join


def _bundle(tmp_path: Path) -> tuple[Path, dict]:
    (tmp_path / "rootfs").mkdir()
    config = copy.deepcopy(spec.default_spec())
    return tmp_path, config


def test_default_spec_is_runcs(tmp_path: Path) -> None:
    config = spec.default_spec()
    assert config["process"]["args"] == ["sh"]
    assert config["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert config["root"] == {"path": "rootfs", "readonly": True}
    assert [n["type"] for n in config["linux"]["namespaces"]] == [
        "pid", "network", "ipc", "uts", "mount"
    ]  # fmt: skip
    bundle, _ = _bundle(tmp_path)
    spec.validate(config, str(bundle))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(ociVersion="2.0.0"), "ociVersion"),
        (lambda c: c["linux"]["namespaces"].append({"type": "pid"}), "twice"),
        (lambda c: c["linux"]["namespaces"].append({"type": "nope"}), "unknown namespace"),
        (lambda c: c["linux"].update(namespaces=[{"type": "pid"}]), "mount namespace"),
        (lambda c: c["linux"]["namespaces"].append({"type": "user"}), "uidMappings"),
        (
            lambda c: c["linux"].update(uidMappings=[{"containerID": 0, "hostID": 1, "size": 1}]),
            "need a new user namespace",
        ),
        (lambda c: c["linux"].update(namespaces=[{"type": "mount"}]), "uts namespace"),
        (lambda c: c["mounts"].append({"destination": "relative"}), "absolute"),
        (lambda c: c["linux"].update(sysctl={"kernel.panic": "1"}), "not namespaced"),
        (
            lambda c: c["linux"].update(
                sysctl={"net.ipv4.ip_forward": "1"}, namespaces=[{"type": "mount"}, {"type": "uts"}]
            ),
            "network namespace",
        ),
        (lambda c: c["process"].update(args=[]), "process.args"),
        (lambda c: c["process"].update(cwd="relative"), "process.cwd"),
        (lambda c: c["process"]["capabilities"]["bounding"].append("CAP_BOGUS"), "CAP_BOGUS"),
        (lambda c: c["process"]["rlimits"].append({"type": "RLIMIT_BOGUS"}), "RLIMIT_BOGUS"),
        (
            lambda c: c["process"].update(rlimits=[{"type": "RLIMIT_CORE", "soft": 2, "hard": 1}]),
            "soft limit",
        ),
        (lambda c: c.update(hooks={"prestart": [{"path": "relative"}]}), "absolute"),
        (lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_NOPE"}), "SCMP_ACT_NOPE"),
        (lambda c: c["root"].update(path="missing"), "does not exist"),
        (lambda c: c["process"].update(apparmorProfile="docker-default"), "AppArmor"),
        (lambda c: c["process"].update(selinuxLabel="system_u:system_r:container_t:s0"), "SELinux"),
        (
            lambda c: c["linux"].update(mountLabel="system_u:object_r:container_file_t:s0"),
            "SELinux",
        ),
    ],
)
def test_validate_refuses(tmp_path: Path, change, message: str) -> None:
    if (message == "AppArmor" and spec.apparmor_enabled()) or (
        message == "SELinux" and spec.selinux_enabled()
    ):
        pytest.skip(f"{message} is enabled here: the label would be applied")
    bundle, config = _bundle(tmp_path)
    change(config)
    with pytest.raises(ConfigError, match=message):
        spec.validate(config, str(bundle))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.json"):
        spec.load(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        spec.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.0.0"}))
    assert spec.load(str(tmp_path)) == {"ociVersion": "1.0.0"}


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a b", "x\n"])
def test_container_ids(bad: str) -> None:
    with pytest.raises(ConfigError):
        spec.validate_id(bad)
    spec.validate_id("web-1.example_a+b")


def test_secure_join_keeps_symlinks_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "abs").symlink_to("/etc")
    (root / "rel").symlink_to("../../../../etc")
    (root / "loop").symlink_to("loop")
    assert secure_join(str(root), "/abs/passwd") == str(root / "etc/passwd")
    assert secure_join(str(root), "/rel") == str(root / "etc")
    assert secure_join(str(root), "/../../x") == str(root / "x")
    assert secure_join(str(root), "/new/dir") == str(root / "new/dir")
    with pytest.raises(ConfigError, match="too many symlinks"):
        secure_join(str(root), "/loop/x")


def test_mount_options() -> None:
    flags, propagation, data = parse_options(
        ["nosuid", "noexec", "ro", "rbind", "rprivate", "mode=755", "size=1m"]
    )
    assert flags == sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_RDONLY | sc.MS_BIND | sc.MS_REC
    assert propagation == sc.MS_PRIVATE | sc.MS_REC
    assert data == ["mode=755", "size=1m"]
    assert parse_options(["ro", "rw"])[0] == 0


@pytest.mark.parametrize(
    ("text", "number"),
    [("KILL", 9), ("SIGKILL", 9), ("9", 9), ("term", 15), ("SIGRTMIN+2", signal.SIGRTMIN + 2)],
)
def test_signals(text: str, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("bad", ["SIGNOPE", "0", "65", "-1"])
def test_bad_signals(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_signal(bad)


def test_flags_follow_runc() -> None:
    args = parse(
        ["--root", "/r", "-log-format=json", "create", "-b", "/bundle", "--pid-file=/p", "c1"],
        cli.GLOBAL_FLAGS,
        cli.VERBS,
    )
    assert (args.root, args.log_format, args.verb) == ("/r", "json", "create")
    assert (args.bundle, args.pid_file, args.id, args.preserve_fds) == ("/bundle", "/p", "c1", 0)
    args = parse(["exec", "-t", "-e", "A=1", "-e", "B=2", "c1", "sh", "-c", "x"], cli.GLOBAL_FLAGS,
                 cli.VERBS)  # fmt: skip
    assert args.tty and args.env == ["A=1", "B=2"] and args.command == ["sh", "-c", "x"]
    args = parse(["kill", "--all", "c1", "KILL"], cli.GLOBAL_FLAGS, cli.VERBS)
    assert (args.all, args.id, args.signal) == (True, "c1", "KILL")
    assert parse(["kill", "c1"], cli.GLOBAL_FLAGS, cli.VERBS).signal is None
    bad_lines = [
        ["create"],
        ["nope"],
        ["create", "--bogus", "x"],
        ["run", "--preserve-fds", "x", "i"],
        ["state", "a", "b"],
    ]
    for bad in bad_lines:
        with pytest.raises(InvalidArgument):
            parse(bad, cli.GLOBAL_FLAGS, cli.VERBS)


def test_capability_names() -> None:
    assert capabilities.parse(["CAP_SYS_ADMIN", "kill"]) == {21, 5}
    with pytest.raises(ConfigError, match="CAP_NOPE"):
        capabilities.parse(["CAP_NOPE"])


def test_exec_stub_is_a_minimal_static_elf() -> None:
    image = execstub.elf_image("x86_64")
    assert image is not None and image[:4] == b"\x7fELF"
    (entry,) = struct.unpack_from("<Q", image, 24)
    assert entry == 0x400000 + 64 + 56
    assert execstub.elf_image("sparc") is None


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the stub exists for x86_64 only")
def test_exec_stub_runs_and_cannot_be_written() -> None:
    fd = execstub.sealed_stub_fd()
    assert fd is not None
    try:
        for argv, code in (
            (["stub", "/bin/sh", "sh", "-c", "exit 7"], 7),
            (["stub", "/no/such/file", "x"], 127),
            (["stub", "/bin/sh"], 126),  # how a "#!/proc/self/exe" script reaches it
        ):
            pid = os.fork()
            if pid == 0:
                try:
                    sc.execveat(fd, argv, [])
                finally:
                    os._exit(99)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == code
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
    finally:
        os.close(fd)
