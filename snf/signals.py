"""Ctrl-C and SIGTERM as a flag: long loops stop between steps, never inside a client call.

A KeyboardInterrupt raised inside kafka-python's poll or a producer send can
leave the client half-way through a request, and its close() then hangs; a
loop that checks a flag stops where it is safe to.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["stop_on_signals"]


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set `stop` on SIGINT and SIGTERM while inside; the previous handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; the caller stops it otherwise
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
