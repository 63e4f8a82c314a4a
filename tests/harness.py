"""Shared pieces of the function tests (import as ``from tests.harness import JsonStore``)."""

from __future__ import annotations

import json
from typing import Any

from snf.core.tables import MemoryStore

__all__ = ["JsonStore"]


class JsonStore(MemoryStore):
    """MemoryStore that stores values as Faust's JSON would, and counts writes."""

    def __init__(self) -> None:
        super().__init__()
        self.sets = 0
        self.deletes = 0

    def set(self, key: bytes, value: Any) -> None:
        self.sets += 1
        super().set(key, json.loads(json.dumps(value)))

    def delete(self, key: bytes) -> None:
        self.deletes += 1
        super().delete(key)
