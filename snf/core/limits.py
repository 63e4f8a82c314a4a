"""Bounds on what configuration may hold: durations and the files it names.

A pipeline file comes from a user, and the files it names (an IDS rules file)
may be anything on disk. Each limit here turns what would be a traceback, a
hang or a leak into a one-line error before anything starts:

    Seconds          a duration: a finite float in (0, MAX_SECONDS], so that
                     `round(s * 1e9)` fits a signed 64-bit nanosecond count
                     (YAML's .inf, .nan and 1e300 are rejected by the model)
    read_text_file   a regular file of at most MAX_FILE_BYTES of UTF-8: never a
                     FIFO (its open would block), /dev/zero (endless) or a
                     directory; errors name the file, never echo its content
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated

from pydantic import Field

from snf.errors import ConfigError

__all__ = ["MAX_FILE_BYTES", "MAX_SECONDS", "FileLimitError", "Seconds", "read_text_file"]

MAX_FILE_BYTES = 4 * 1024 * 1024  # a pipeline file or a rules file
MAX_SECONDS = 10 * 365 * 86400  # ten years: longer is a typo, and far within int64 ns

Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]


class FileLimitError(ConfigError):
    """A configuration file that cannot be read within the limits."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def read_text_file(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes.

    Raises FileLimitError("<path>: <what>: <problem>"); the message names the
    file and, for bad UTF-8, the line, but never quotes the content.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then rejects it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileLimitError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FileLimitError(f"{path}: {what} must be a regular file, not {_kind(mode)}")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)  # a file still growing is cut here too
        except OSError as exc:
            raise FileLimitError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise FileLimitError(f"{path}: {what} is larger than {limit} bytes (the limit)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileLimitError(f"{path}: {what} is not UTF-8 text (line {line})") from None
