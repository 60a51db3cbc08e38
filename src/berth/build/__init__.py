"""The builder's pure front half: Dockerfile parsing, word expansion, .dockerignore, stages.

Nothing here touches the daemon, the kernel or the image store, so every rule can be
tested in isolation; the executor (a separate module) consumes these results.
"""

from berth.build.parser import BuildError, Dockerfile, Heredoc, Instruction, parse

__all__ = ["BuildError", "Dockerfile", "Heredoc", "Instruction", "parse"]
