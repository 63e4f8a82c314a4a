"""Exception roots. Every error snf raises on purpose derives from SnfError."""

from __future__ import annotations

__all__ = ["ConfigError", "SnfError"]


class SnfError(Exception):
    """Base of all snf errors; the CLI prints these without a traceback."""


class ConfigError(SnfError):
    """A pipeline or function configuration that cannot be used."""
