"""Entry point of ``berthd``."""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "berthd: the Engine API daemon is not built yet; containers run with berth-runtime",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
