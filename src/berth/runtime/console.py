"""Terminals: a pty made inside the container, handed over with SCM_RIGHTS, and a
proxy between the runtime's own stdio and the pty master for foreground runs."""

from __future__ import annotations

import array
import fcntl
import os
import select
import socket
import struct
import termios

TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430


def open_pty_in(devpts_dir: str) -> tuple[int, int, str]:
    """Open a new pty pair on the devpts instance mounted at ``devpts_dir``."""
    master = os.open(os.path.join(devpts_dir, "ptmx"), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, struct.pack("I", 0)))[0]
    slave_path = os.path.join(devpts_dir, str(number))
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    return master, slave, f"/dev/pts/{number}"


def set_size(fd: int, height: int, width: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def make_controlling(slave: int) -> None:
    """Make ``slave`` the controlling terminal (the caller is a session leader) and stdio."""
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)


def send_to_console_socket(path: str, master: int) -> None:
    """Send the pty master to the console socket as runc does (one SCM_RIGHTS message)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        fds = array.array("i", [master])
        sock.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])


def proxy(master: int, stop_fd: int | None = None) -> None:
    """Copy stdin to the pty and the pty to stdout until the pty closes.

    ``stop_fd`` becoming readable (e.g. a pidfd) also ends the copy once the pty
    has been drained.
    """
    import tty

    stdin_tty = os.isatty(0)
    saved = termios.tcgetattr(0) if stdin_tty else None
    if stdin_tty:
        tty.setraw(0, termios.TCSANOW)  # keep what was typed before the copy began
        try:
            rows, cols = os.get_terminal_size(0)
            set_size(master, rows, cols)
        except OSError:
            pass
    watch = [master, 0]
    if stop_fd is not None:
        watch.append(stop_fd)
    try:
        while True:
            ready, _, _ = select.select(watch, [], [])
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    watch.remove(0)
            if stop_fd is not None and stop_fd in ready:
                watch.remove(stop_fd)
                _drain(master)
                break
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _drain(master: int) -> None:
    while select.select([master], [], [], 0.05)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        os.write(1, data)
