"""Typed errors: every failure a user can meet is one of these, with one clear line.

The CLI prints ``str(error)`` and exits with ``exit_code``; the API layer (a later
layer) maps the same classes to HTTP statuses. Messages are lower-case, carry the
offending value, and say what to do where that helps.
"""

from __future__ import annotations


class BerthError(Exception):
    """Base of all errors meant for a user."""

    exit_code = 1


class InvalidArgument(BerthError):
    """The user gave a value that cannot work (bad id, bad signal, bad flag)."""


class NotFound(BerthError):
    """A named thing (container, file, namespace) does not exist."""


class Conflict(BerthError):
    """The thing exists already, or is in a state that forbids the action."""


class ConfigError(BerthError):
    """A bundle's config.json is missing, malformed or asks for the impossible."""


class SystemFailure(BerthError):
    """The kernel refused an operation the runtime needed."""
