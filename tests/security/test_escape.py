"""Escape attempts from a container made with ``berth-runtime spec`` defaults.

The process inside is root (uid 0) with the default capabilities; each test tries
one thing a container must not be able to do, and checks from the host that it
did not happen.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from tests.helpers import Bundle, RuntimeCLI

SH = ["sh", "-c"]


def _run(berth: RuntimeCLI, bundle: Bundle) -> tuple[int, str]:
    result = berth.run(bundle, timeout=30)
    return result.returncode, result.stdout + result.stderr


def test_cannot_mount(berth: RuntimeCLI, make_bundle) -> None:
    _, out = _run(berth, make_bundle([*SH, "mount -t tmpfs none /tmp && echo MOUNTED"]))
    assert "MOUNTED" not in out
    assert "permission denied" in out.lower() or "Operation not permitted" in out


def test_cannot_see_host_processes(berth: RuntimeCLI, make_bundle) -> None:
    _, out = _run(berth, make_bundle([*SH, "ls /proc | grep '^[0-9]' | tr '\\n' ' '"]))
    pids = {int(p) for p in out.split()}
    assert pids <= {1, 2, 3, 4, 5}, pids
    # and the host's pid 1 command line is not what the container's pid 1 shows
    _, cmdline = _run(berth, make_bundle(["cat", "/proc/1/cmdline"]))
    assert cmdline.startswith("cat")


def test_cannot_write_proc_sys(berth: RuntimeCLI, make_bundle) -> None:
    before = Path("/proc/sys/kernel/shmmax").read_text()
    _, out = _run(
        berth,
        make_bundle(
            [*SH, "echo 1234 > /proc/sys/kernel/shmmax; echo 1 > /proc/sys/vm/overcommit_memory"]
        ),
    )
    assert out.count("Read-only file system") == 2
    assert Path("/proc/sys/kernel/shmmax").read_text() == before


def test_cannot_reach_sysrq_trigger(berth: RuntimeCLI, make_bundle) -> None:
    # The host may lack /proc/sysrq-trigger (CONFIG_MAGIC_SYSRQ); a container must
    # not be able to create or write it either way. 'h' only prints help if it works.
    _, out = _run(berth, make_bundle([*SH, "echo h > /proc/sysrq-trigger && echo WROTE"]))
    assert "WROTE" not in out


def test_cannot_read_kcore_or_kernel_internals(berth: RuntimeCLI, make_bundle) -> None:
    _, out = _run(
        berth,
        make_bundle(
            [
                *SH,
                "for f in /proc/kcore /proc/timer_list /proc/keys; do"
                " printf '%s=' $f; cat $f 2>/dev/null | wc -c; done",
            ]
        ),
    )
    for line in out.split():
        name, size = line.split("=")
        assert size == "0", f"{name} leaked {size} bytes"


def test_cannot_create_device_nodes(berth: RuntimeCLI, make_bundle) -> None:
    _, out = _run(berth, make_bundle([*SH, "mknod /dev/shm/sda b 8 0 && echo MADE"]))
    assert "MADE" not in out
    assert "Operation not permitted" in out


def test_cannot_load_kernel_modules(berth: RuntimeCLI, make_bundle) -> None:
    _, out = _run(
        berth,
        make_bundle([*SH, "echo junk > /dev/shm/m.ko; insmod /dev/shm/m.ko && echo LOADED"]),
    )
    assert "LOADED" not in out
    # EPERM without CAP_SYS_MODULE; a kernel built without modules answers ENOSYS first.
    assert "Operation not permitted" in out or "does not support" in out


def test_cannot_regain_dropped_capabilities(berth: RuntimeCLI, make_bundle) -> None:
    # Root inside, yet: no CAP_SYS_ADMIN (sethostname fails), nothing in the bounding
    # set to regain through exec, and no_new_privs set so setuid/file caps cannot add.
    bundle = make_bundle(
        [
            *SH,
            "hostname evil && echo RENAMED;"
            " grep -E '^(CapBnd|CapPrm|NoNewPrivs)' /proc/self/status",
        ]
    )
    _, out = _run(berth, bundle)
    assert "RENAMED" not in out
    fields = dict(line.split(":\t") for line in out.splitlines() if ":\t" in line)
    default_caps = (1 << 5) | (1 << 10) | (1 << 29)  # KILL, NET_BIND_SERVICE, AUDIT_WRITE
    assert int(fields["CapBnd"], 16) == default_caps
    assert int(fields["CapPrm"], 16) == default_caps
    assert fields["NoNewPrivs"].strip() == "1"


def test_cannot_overwrite_the_runtime_binary_through_proc_self_exe(
    berth: RuntimeCLI, make_bundle
) -> None:
    """CVE-2019-5736: a container program whose interpreter is /proc/self/exe."""
    host_python = os.path.realpath(sys.executable)
    digest_before = hashlib.sha256(Path(host_python).read_bytes()).hexdigest()
    bundle = make_bundle(["/evil"])
    bundle.config["root"]["readonly"] = False
    evil = bundle.rootfs / "evil"
    # Were /proc/self/exe the host's python, this file would run as Python code
    # inside the container and try to open its own binary for writing.
    evil.write_text(
        "#!/proc/self/exe\n"
        "import os\n"
        "fd = os.open('/proc/self/exe', os.O_WRONLY)\n"
        "os.write(fd, b'pwned')\n"
    )
    evil.chmod(0o755)
    result = berth.run(bundle, timeout=30)
    assert result.returncode == 126, (result.returncode, result.stderr)
    assert hashlib.sha256(Path(host_python).read_bytes()).hexdigest() == digest_before
    # What /proc/self/exe is for the container's init before it runs the program:
    # a sealed memfd, not a host file.
    probe = make_bundle([*SH, "readlink /proc/self/exe; true"])
    out = berth.run(probe, check=True).stdout
    assert out.strip() == "/bin/busybox"


def test_exec_cannot_overwrite_the_runtime_binary(berth: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["sleep", "30"])
    bundle.config["root"]["readonly"] = False
    (bundle.rootfs / "evil").write_text("#!/proc/self/exe\nprint('ran host python')\n")
    (bundle.rootfs / "evil").chmod(0o755)
    bundle.write()
    cid = "sec-exec"
    berth.remember(cid)
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as err:
        berth(
            "create",
            "--bundle",
            str(bundle.path),
            cid,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    berth("start", cid, check=True)
    result = berth("exec", cid, "/evil")
    assert "ran host python" not in result.stdout
    assert result.returncode == 126
