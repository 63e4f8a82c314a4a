"""The worker's per-record protocol (snf.runtime.worker.processor), without Faust or Kafka.

What the Processor skips and why, the journal ring's back-pressure, checkpoints
and committable offsets, and the at-least-once mode. Crash recovery itself is
in test_journal.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

import pytest

from snf import wire
from snf.guarantee.journal import JOURNAL_PREFIX, JOURNAL_SLOTS, JournalEntry, journal_key
from snf.guarantee.lineage import CAPTURE_ORIGIN, Lineage
from snf.packet.batch import PacketBatch
from snf.runtime.worker.processor import InputRecord
from tests.packets import tcp4
from tests.worker_harness import LoggedTable, Sends, input_records, make_processor, user_state


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def test_a_record_delivered_again_to_its_handler_changes_nothing() -> None:
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends)
    records = input_records(3, random.Random(1), end=False)

    async def go() -> None:
        for r in records:
            await processor.handle(r)
        before = (dict(table.data), len(sends.sent))
        await processor.handle(records[1])  # Faust's seek after a rebalance
        assert (table.data, len(sends.sent)) == before

    run(go())
    assert processor.counters["redelivered"] == 1


def test_a_copy_from_an_upstream_redo_is_skipped_by_its_lineage() -> None:
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends)
    first, second = input_records(2, random.Random(2), end=False)
    # The upstream redid offset 0 after a crash: same lineage, new input offset.
    again = InputRecord(0, 2, first.value, first.headers)

    async def go() -> None:
        await processor.handle(first)
        await processor.handle(second)
        state, sent = user_state(table), len(sends.sent)
        await processor.handle(again)
        assert (user_state(table), len(sends.sent)) == (state, sent)

    run(go())
    assert processor.counters["duplicate_in"] == 1
    assert processor.done[0] == 2


def test_a_resumed_replay_s_repeats_are_dropped_packet_by_packet() -> None:
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends)
    origin = f"{CAPTURE_ORIGIN}run-1/0"
    frames = [tcp4("10.0.0.1", "10.0.0.2", 1000 + i, 80, flags="S") for i in range(4)]

    def batch(offset: int, seqs: range) -> InputRecord:
        rows = [(10**9 + q, len(frames[q]), frames[q], 7, q, "") for q in seqs]
        value = wire.encode(PacketBatch.from_rows(1, rows))
        return InputRecord(0, offset, value, [Lineage(origin, max(seqs), 0).header()])

    async def go() -> None:
        await processor.handle(batch(0, range(0, 2)))
        await processor.handle(batch(1, range(0, 4)))  # seqs 0 and 1 went through before

    run(go())
    assert processor.counters["duplicate_in_packets"] == 2
    assert processor.counters["in"] == 4  # 2 + the 2 new ones


def test_an_undecodable_message_is_counted_and_passed_over() -> None:
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends)
    block = wire.encode_record_blocks([{"ts_ns": 1}])[0]

    async def go() -> None:
        await processor.handle(InputRecord(0, 0, b"not a batch"))
        await processor.handle(InputRecord(0, 1, block))  # records on a packet topic

    run(go())
    assert processor.counters["bad_batch"] == 2
    assert processor.done[0] == 1
    assert [(s.topic, s.partition) for s in sends.sent] == [("snf.j.ingress.dlq", 0)] * 2
    assert [s.value for s in sends.sent] == [b"not a batch", block]
    why = dict(sends.sent[1].headers)
    assert why["snf.errors.offset"] == b"1" and why["snf.errors.class"] == b"WireError"


def test_a_full_journal_ring_waits_for_the_oldest_acknowledgement() -> None:
    table, sends = LoggedTable(), Sends(auto_ack=False)
    processor, _ = make_processor(table, sends)
    records = input_records(JOURNAL_SLOTS, random.Random(3), end=False)

    async def go() -> None:
        for r in records[: JOURNAL_SLOTS - 1]:
            await processor.handle(r)
        last = asyncio.ensure_future(processor.handle(records[-1]))
        await asyncio.sleep(0.05)
        assert not last.done()  # 255 events in flight: the ring has no free slot
        sends.sent[0].future.set_result(None)  # offset 0's only output
        await asyncio.wait_for(last, 1.0)

    run(go())
    entry = JournalEntry.decode(table.get(journal_key(JOURNAL_SLOTS - 1)))
    assert entry.offset == JOURNAL_SLOTS - 1 and entry.settled == 1


def test_an_idle_partition_gets_a_checkpoint_so_commits_reach_its_end() -> None:
    table, sends = LoggedTable(), Sends(auto_ack=False)
    processor, _ = make_processor(table, sends)
    records = input_records(3, random.Random(4), end=False)

    async def go() -> None:
        for r in records:
            await processor.handle(r)

    run(go())
    assert processor.committable(0) == 0  # the newest entry: nothing settled before it
    assert processor.checkpoint_due(0) is None  # outputs still in flight
    sends.ack(1.0, random.Random(0))
    assert processor.checkpoint_due(0) == 3
    assert not processor.write_checkpoint(0, 2)  # not the next offset: the agent moved
    assert processor.write_checkpoint(0, 3)
    assert processor.committable(0) == 3 and processor.checkpoint_due(0) is None
    entry = JournalEntry.decode(table.get(journal_key(3)))
    assert (entry.offset, entry.settled, entry.before) == (3, 3, {})


def test_partitions_that_went_elsewhere_are_forgotten() -> None:
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends)
    run(processor.handle(input_records(1, random.Random(5), end=False)[0]))
    processor.keep_only([1, 2])
    assert processor.done == {} and processor.parts == {} and processor.committable(0) is None


AT_LEAST_ONCE = """\
name: j
partitions: 1
functions:
  - {name: fm, function: flowmon, processing_guarantee: at_least_once}
"""


def test_at_least_once_writes_no_journal_and_commits_after_the_last_record() -> None:
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends, AT_LEAST_ONCE)
    records = input_records(4, random.Random(6))

    async def go() -> None:
        for r in records:
            await processor.handle(r)

    run(go())
    assert not any(k.startswith(JOURNAL_PREFIX) for k, _ in table.log)
    assert user_state(table) and processor.committable(0) == len(records)
    assert processor.parts == {}


@pytest.mark.parametrize("journaled", [True, False])
def test_outputs_carry_their_lineage_in_order(journaled: bool) -> None:
    table, sends = LoggedTable(), Sends()
    text = None if journaled else AT_LEAST_ONCE
    processor, _ = make_processor(table, sends, *([text] if text else []))
    records = input_records(3, random.Random(7))

    async def go() -> None:
        for r in records:
            await processor.handle(r)

    run(go())
    lineages = [s.lineage for s in sends.sent]
    assert {lin.origin for lin in lineages} == {"fm/0"}
    for offset in range(len(records)):
        mine = [lin.index for lin in lineages if lin.offset == offset]
        assert mine == list(range(len(mine)))
    # The end of input: the flow records, an end block, the end marker passed on.
    ends = [wire.decode_any(s.value) for s in sends.sent if s.lineage.offset == 3]
    assert isinstance(ends[-1], wire.EndMarker) and ends[-1].origin == "fm/0"
