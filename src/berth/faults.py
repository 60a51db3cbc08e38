"""Crash points for the tests that kill berthd in the middle of its work.

``BERTH_CRASH_AT=create:snapshot`` (a comma-separated list) makes the daemon SIGKILL
itself when it reaches that point: the same as ``kill -9`` at the worst moment, but
at a known one. Unset (always, outside those tests) a point costs a set lookup.
"""

from __future__ import annotations

import os
import signal

_POINTS = frozenset(filter(None, os.environ.get("BERTH_CRASH_AT", "").split(",")))


def point(name: str) -> None:
    if name in _POINTS:
        os.kill(os.getpid(), signal.SIGKILL)
