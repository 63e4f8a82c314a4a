"""What the agent, the timers and the signal handlers of one worker share."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["Coordination"]


@dataclass
class Coordination:
    # One record at a time, whether the agent or catch-up handles it.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set while a record is being handled (a drain waits for it).
    busy: asyncio.Event = field(default_factory=asyncio.Event)
    # A planned stop is under way: take no more records, commit, leave.
    draining: asyncio.Event = field(default_factory=asyncio.Event)
