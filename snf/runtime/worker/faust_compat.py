"""Every use of a private Faust or aiokafka API, in one place, behind a version check.

The worker needs a few things Faust does not offer publicly: to commit
offsets itself (only up to a settled point, snf.guarantee.journal), to read
a table partition whole at the end of input, to touch a table outside the
agent (Faust takes the partition from the current event), to shorten the
fetcher's long-poll, and the consumer's group member id. Each is a function
here. They were written against the pinned versions below; `check_versions`
refuses to start a worker under any other version with a clear error, and
each accessor names the attribute it could not find, so an upgrade fails at
start, loudly, never later and silently (tests/unit/test_faust_compat.py
checks every attribute against the installed versions).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
import weakref
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import faust.transport.drivers.aiokafka as faust_aiokafka
from faust.streams import _current_event, current_event

from snf.errors import SnfError

__all__ = [
    "PINNED",
    "FaustCompatError",
    "check_versions",
    "commit",
    "committed_offset",
    "current_partition",
    "member_id",
    "partition_items",
    "record_committed",
    "replace_commit",
    "send_buffered",
    "shorten_fetch_wait",
    "standing_in_for_event",
]

# The versions whose private APIs this module was written against (pyproject.toml pins them).
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class FaustCompatError(SnfError):
    """The installed Faust or aiokafka is not what the worker's private uses expect."""


def check_versions(found: Mapping[str, str] | None = None) -> None:
    """Refuse to run a worker on other Faust or aiokafka versions than the pinned ones."""
    if found is None:
        found = {name: importlib.metadata.version(name) for name in PINNED}
    wrong = [f"{name} {found[name]} (expected {want})" for name, want in PINNED.items()
             if found.get(name) != want]  # fmt: skip
    if wrong:
        raise FaustCompatError(
            "the snf worker uses private APIs of "
            + " and ".join(f"{n} {v}" for n, v in PINNED.items())
            + "; installed: "
            + ", ".join(wrong)
            + ". Reinstall the pinned versions, or review snf/runtime/worker/faust_compat.py"
        )


def _private(owner: Any, name: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        raise FaustCompatError(
            f"{type(owner).__name__}.{name} is gone: the worker relies on it "
            f"(snf/runtime/worker/faust_compat.py, written for {PINNED})"
        ) from None


# -- the fetcher ------------------------------------------------------------------------


def shorten_fetch_wait(ms: int) -> None:
    """Faust hard-codes fetch_max_wait_ms=1500 for its consumer. Its recovery's
    requests (highwaters, start offsets) queue behind that long-poll on the same
    connection, so each step of a takeover took up to 1.5 s (docs/FAULT-TOLERANCE.md).
    A shorter wait costs a few more idle fetches and makes takeovers faster."""
    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, "_snf_fetch_wait", False):
        return  # patched already (one worker per process; tests may create more apps)
    create = _private(thread_cls, "_create_worker_consumer")

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        _private(consumer, "_fetch_max_wait_ms")
        consumer._fetch_max_wait_ms = ms  # read when the fetcher starts
        return consumer

    thread_cls._create_worker_consumer = create_worker_consumer
    thread_cls._snf_fetch_wait = True


# -- the current event --------------------------------------------------------------------


def current_partition() -> int:
    """The partition of the event being processed (Faust's tables write to it)."""
    event = current_event()
    if event is None:
        raise RuntimeError("table access outside an event: use standing_in_for_event")
    return int(event.message.partition)


class _StandInEvent:
    """What Faust's tables read of an event: its message's partition (weakly referenced)."""

    def __init__(self, tp: Any, offset: int) -> None:
        self.message = SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset)


@contextlib.contextmanager
def standing_in_for_event(tp: Any, offset: int) -> Iterator[None]:
    """Table access outside the agent (a record read directly, a checkpoint): Faust's
    tables take the partition from the current event, so stand one in."""
    held = _StandInEvent(tp, offset)  # referenced here: the context keeps a weak reference
    token = _current_event.set(weakref.ref(held))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


# -- tables ---------------------------------------------------------------------------


def partition_items(table: Any, partition: int) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) of one partition of a RocksDB-backed Faust table."""
    store = table.data  # faust.stores.rocksdb.Store
    db = _private(store, "_db_for_partition")(partition)
    decode_key, decode_value = _private(store, "_decode_key"), _private(store, "_decode_value")
    for key, value in _private(store, "_visible_items")(db):
        yield decode_key(key), decode_value(value)


async def send_buffered(producer: Any, deadline: float) -> bool:
    """Send what Faust's producer buffer holds (table writes wait there), however
    long it takes until `deadline` (time.monotonic); Faust's own flush gives up
    after 0.1 s without progress. False if the buffer is not empty by then."""
    buffer = _private(producer, "buffer")
    while buffer.size:
        if time.monotonic() > deadline:
            return False
        await buffer.flush()
    return True


# -- offsets and the group ------------------------------------------------------------


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset Faust last committed (or found committed) for `tp`."""
    return _private(consumer, "_committed_offset").get(tp)


def record_committed(consumer: Any, offsets: Mapping[Any, int]) -> None:
    """Tell Faust what snf committed, so it never commits an older offset."""
    known = _private(consumer, "_committed_offset")
    for tp, offset in offsets.items():
        if (known.get(tp) or -1) < offset:
            known[tp] = offset


async def commit(consumer: Any, offsets: Mapping[Any, int]) -> bool:
    """Commit exactly these offsets (Faust's own commit goes by its acks)."""
    return bool(await _private(consumer, "_commit")(offsets))


def replace_commit(consumer: Any, commit_offsets: Any) -> None:
    """Route Faust's periodic and rebalance commits to snf's (`commit_offsets(offsets)`)."""
    _private(consumer, "_commit_offsets")

    async def snf_commit_offsets(offsets: Any, start_new_transaction: bool = True) -> bool:
        return bool(await commit_offsets(offsets))

    consumer._commit_offsets = snf_commit_offsets


def member_id(consumer: Any) -> str:
    """This worker's member id in its consumer group (aiokafka's coordinator)."""
    thread = _private(consumer, "_thread")
    client = _private(thread, "_ensure_consumer")()
    return str(_private(client, "_coordinator").member_id)
