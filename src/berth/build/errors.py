"""The one error type of the builder's front half."""

from __future__ import annotations

from berth.errors import InvalidArgument


class BuildError(InvalidArgument):
    """A Dockerfile, build argument or ignore file that cannot work.

    The message starts with ``Dockerfile:LINE:COL:`` when the fault has a place, so a
    user can go straight to it; ``line`` and ``column`` carry the same for callers.
    """

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        filename: str = "Dockerfile",
    ) -> None:
        self.reason = message
        self.line = line
        self.column = column
        self.filename = filename
        if line is not None:
            where = f"{filename}:{line}" + (f":{column}" if column is not None else "")
            message = f"{where}: {message}"
        super().__init__(message)
