"""A sealed, in-memory exec trampoline: the defence against CVE-2019-5736.

The container's init is a forked Python interpreter, so ``/proc/self/exe`` in it
points at the host's python binary. If the container's program is a script whose
interpreter line is ``#!/proc/self/exe``, the kernel would run the *host* binary
inside the container, and a root process there could hold it open and overwrite
it later. runc answers by re-executing itself from a sealed memfd copy.

We do the same with something far smaller than an interpreter: a 64-byte static
ELF that only does ``execve(argv[1], &argv[2], envp)`` and exits 127 (not found)
or 126 (any other failure, or fewer than three arguments: that is how a script
with ``#!/proc/self/exe`` reaches it, and refusing ends the loop). It lives in a
memfd sealed against writes, and the init executes it with ``execveat``; from
then on ``/proc/self/exe`` is the sealed memfd, which nobody can write. Building
it here from its machine code (shown below as assembly) avoids shipping or
compiling a binary. On architectures without a stub the runtime execs directly.
"""

from __future__ import annotations

import fcntl
import os
import struct

from berth.linux import syscalls

# x86_64, Intel syntax:
#   mov rax, [rsp]              ; argc
#   mov edi, 126
#   cmp rax, 3 ; jb done        ; no program argv: a "#!/proc/self/exe" loop, stop it
#   mov rdi, [rsp+16]           ; argv[1]: the program's resolved path
#   lea rsi, [rsp+24]           ; &argv[2]: the program's own argv
#   lea rdx, [rsp+rax*8+16]     ; envp
#   mov eax, 59                 ; execve
#   syscall
#   mov edi, 127                ; exit status: 127 for ENOENT/ENOTDIR...
#   cmp eax, -2 ; je done
#   cmp eax, -20 ; je done
#   mov edi, 126                ; ...126 for anything else
# done:
#   mov eax, 231                ; exit_group
#   syscall
_CODE = {
    "x86_64": bytes.fromhex(
        "488b0424bf7e0000004883f803722a488b7c2410488d742418488d54c410"
        "b83b0000000f05bf7f00000083f8fe740a83f8ec7405bf7e000000b8e700"
        "00000f05"
    ),
}
_MACHINE_IDS = {"x86_64": 62}

MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
F_ADD_SEALS = 1033
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008


def elf_image(machine: str) -> bytes | None:
    """The whole ELF file for ``machine``, or None when there is no stub for it."""
    code = _CODE.get(machine)
    if code is None:
        return None
    base = 0x400000
    header_size, phdr_size = 64, 56
    entry = base + header_size + phdr_size
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        _MACHINE_IDS[machine],
        1,
        entry,
        header_size,  # program headers right after this header
        0,
        0,
        header_size,
        phdr_size,
        1,
        0,
        0,
        0,
    )
    total = header_size + phdr_size + len(code)
    phdr = struct.pack(
        "<IIQQQQQQ",
        1,  # PT_LOAD
        5,  # PF_R | PF_X
        0,
        base,
        base,
        total,
        total,
        0x1000,
    )
    return ehdr + phdr + code


def sealed_stub_fd() -> int | None:
    """A close-on-exec memfd holding the stub, sealed so it can never be written.

    The descriptor is close-on-exec, yet ``execveat`` of it works: the kernel
    opens the file before it closes the descriptors (it is an ELF, not a script).
    """
    image = elf_image(os.uname().machine)
    if image is None:
        return None
    fd = syscalls.memfd_create("berth-exec", MFD_CLOEXEC | MFD_ALLOW_SEALING)
    try:
        os.write(fd, image)
        os.fchmod(fd, 0o555)
        fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd
