"""The builder's pure front half: Dockerfile parsing, word expansion, .dockerignore, stages.

Nothing here touches the daemon, the kernel or the image store, so every rule can be
tested in isolation; the executor (a separate module) consumes these results.

The parser's names are loaded on first use (PEP 562): ``berth build`` imports
``berth.build.dockerignore`` at start-up and must not pay for the parser (~25 ms).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.build.parser import BuildError, Dockerfile, Heredoc, Instruction, parse

__all__ = ["BuildError", "Dockerfile", "Heredoc", "Instruction", "parse"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from berth.build import parser

        return getattr(parser, name)
    raise AttributeError(f"module 'berth.build' has no attribute {name!r}")
