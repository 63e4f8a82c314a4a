"""The journal protocol after a crash at any point, run by the worker's real Processor.

A Processor (snf.runtime.worker.processor) handles records on an in-memory
state table whose writes are logged in order: the changelog. A crash keeps any
prefix of that log and any set of acknowledged outputs; a new Processor on
the restored table must then end in the state, and (outputs keyed by their
lineage, as every consumer dedups them) with the outputs of a run without the
crash. Below that, the pure parts: recovery plans, entries, lineage, watermarks.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from snf.core.tables import BatchState, MemoryStore
from snf.guarantee.journal import (
    JOURNAL_SLOTS,
    JournalEntry,
    Recovery,
    journal_key,
    journal_keys,
    table_key,
    untable_key,
)
from snf.guarantee.lineage import Lineage, Watermarks
from tests.packets import tcp4
from tests.worker_harness import (
    LoggedTable,
    Sends,
    input_records,
    make_processor,
    outputs_by_lineage,
    restore,
    user_state,
)


def reference_run(records: list) -> tuple[LoggedTable, Sends]:
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends)

    async def go() -> None:
        for r in records:
            await processor.handle(r)

    asyncio.run(go())
    return table, sends


def crash_and_recover(records: list, seed: int) -> tuple[LoggedTable, dict, int, int]:
    """Run until a random record with acks coming late, crash keeping a random prefix
    of the changelog, recover on a new Processor fed from offset 0 (the committed
    offset is never later than the recovery start). Returns the final table, the
    outputs by lineage, the crash point and the recovery start."""
    rng = random.Random(seed)
    crash_after = rng.randrange(1, len(records))
    first_table, first_sends = LoggedTable(), Sends(auto_ack=False)
    first, _ = make_processor(first_table, first_sends)

    async def before_crash() -> None:
        for r in records[:crash_after]:
            await first.handle(r)
            first_sends.ack(0.4, rng)  # acknowledgements come late, in no order

    asyncio.run(before_crash())
    durable = first_table.log[: rng.randrange(len(first_table.log) + 1)]
    table, sends = restore(durable), Sends()
    second, _ = make_processor(table, sends)

    async def after() -> None:
        for r in records:
            await second.handle(r)

    asyncio.run(after())
    start = second.parts[0].start
    assert second.counters["skipped"] == start  # everything before the start, once
    outputs = outputs_by_lineage([*first_sends.acked(), *sends.sent])
    return table, outputs, crash_after, start


@pytest.mark.parametrize("seed", range(40))
def test_a_crash_anywhere_ends_as_a_run_without_it(seed: int) -> None:
    records = input_records(24, random.Random(1000 + seed))
    reference_table, reference_sends = reference_run(records)
    table, outputs, crash_after, start = crash_and_recover(records, seed)
    assert user_state(table) == user_state(reference_table)
    assert outputs == outputs_by_lineage(reference_sends.sent)  # the flow records included
    assert start <= crash_after


def test_a_stale_entry_of_an_earlier_crash_is_undone_consistently() -> None:
    # Owner A crashes after offset 9 with 5..9 unsettled; B redoes 5..7 and crashes
    # too: A's entries for 8 and 9 are newer than B's and still in the ring.
    records = input_records(12, random.Random(3))
    reference_table, reference_sends = reference_run(records)
    a_table, a_sends = LoggedTable(), Sends(auto_ack=False)
    a, _ = make_processor(a_table, a_sends)

    async def run_a() -> None:
        for r in records[:10]:
            await a.handle(r)
            if r.offset < 5:
                a_sends.ack(1.0, random.Random(0))  # 0..4 settle: entry 5 says settled 5

    asyncio.run(run_a())
    b_table, b_sends = restore(a_table.log), Sends(auto_ack=False)
    b, _ = make_processor(b_table, b_sends)

    async def run_b() -> None:
        for r in records[:8]:
            await b.handle(r)
            b_sends.ack(1.0, random.Random(0))  # 5, 6 acknowledged: entry 7 says settled 7

    asyncio.run(run_b())
    assert (b.parts[0].start, b.counters["undone"]) == (5, 5)
    c_table, c_sends = restore(a_table.log + b_table.log), Sends()
    c, _ = make_processor(c_table, c_sends)

    async def run_c() -> None:
        for r in records:
            await c.handle(r)

    asyncio.run(run_c())
    assert (c.parts[0].start, c.counters["undone"]) == (7, 3)  # B's 7, and A's 8 and 9
    assert user_state(c_table) == user_state(reference_table)
    sent = [*a_sends.acked(), *b_sends.acked(), *c_sends.sent]
    assert outputs_by_lineage(sent) == outputs_by_lineage(reference_sends.sent)


def test_no_entries_means_a_fresh_start() -> None:
    plan = Recovery.plan([])
    assert (plan.start, plan.undo, plan.marks.marks, plan.undone) == (0, {}, {}, 0)


def test_all_settled_means_nothing_to_undo_and_marks_after_the_last_event() -> None:
    lin = Lineage("fw/1", 4, 0)
    entry = JournalEntry(4, {b"t\x00k": 1}, Watermarks({"fw/1": (3, 2)}), lin, 4)
    done = JournalEntry(5, {}, Watermarks({"fw/1": (4, 0)}), None, 6)
    plan = Recovery.plan([entry, done])
    assert plan.start == 6 and plan.undo == {} and plan.undone == 0
    assert plan.marks.marks == {"fw/1": (4, 0)}


def test_the_oldest_before_image_of_a_key_wins() -> None:
    e1 = JournalEntry(1, {b"a": 1, b"b": None}, Watermarks(), None, 1)
    e2 = JournalEntry(2, {b"a": 2, b"c": 5}, Watermarks(), None, 1)
    plan = Recovery.plan([e2, e1])
    assert plan.undo == {b"a": 1, b"b": None, b"c": 5} and plan.start == 1


def test_entry_round_trip_keeps_bytes_keys_and_lineage() -> None:
    entry = JournalEntry(
        7,
        {table_key("conn", b"\x00\xff"): [1, "x"], table_key("control", b"f"): None},
        Watermarks({"nat/2": (9, 1)}),
        Lineage("nat/2", 10, 0),
        5,
    )
    back = JournalEntry.decode(entry.encode())
    assert back == entry


def test_journal_keys_form_a_ring() -> None:
    assert journal_key(3) == journal_key(3 + JOURNAL_SLOTS) != journal_key(4)
    assert len(set(journal_keys())) == JOURNAL_SLOTS
    assert untable_key(journal_key(3)) is None
    assert untable_key(table_key("conn", b"k\x00x")) == ("conn", b"k\x00x")


def test_watermarks_skip_what_they_have_seen_per_origin() -> None:
    marks = Watermarks()
    assert marks.is_new(None)  # foreign input: never deduplicated
    a0, a1, b0 = Lineage("fw/0", 5, 0), Lineage("fw/0", 5, 1), Lineage("fw/1", 2, 0)
    assert marks.is_new(a0)
    marks.advance(a0)
    assert not marks.is_new(a0) and marks.is_new(a1) and marks.is_new(b0)
    marks.advance(a1)
    assert not marks.is_new(Lineage("fw/0", 4, 9))
    assert Watermarks.from_json(marks.to_json()) == marks


def test_lineage_header_round_trip() -> None:
    lin = Lineage("flows/12", 123456789, 3)
    assert Lineage.from_headers([("other", b"x"), lin.header()]) == lin
    assert Lineage.from_headers({"snf-lineage": b"capture:s-1/0|2|3"}) == Lineage(
        "capture:s-1/0", 2, 3
    )
    assert Lineage.from_headers(None) is None and Lineage.from_headers([]) is None


def test_a_deferred_batch_state_writes_only_on_apply() -> None:
    store = MemoryStore()
    store.set(b"a", 1)
    state = BatchState({"t": store}, deferred=True)
    view = state.table("t")
    view.set(b"a", 2)
    view.set(b"b", 3)
    view.delete(b"a")
    assert state.write_back() == 2 and store.data == {b"a": 1}  # counted, not written
    assert view.get(b"b") == 3 and view.get(b"a") is None  # the batch sees its writes
    assert dict(state.pending()["t"]) == {b"a": None, b"b": 3}
    assert state.apply() == 2 and store.data == {b"b": 3}


def test_a_resumed_replay_s_repeats_are_dropped_packet_by_packet() -> None:
    from snf.guarantee.lineage import CAPTURE_ORIGIN, drop_replayed
    from snf.packet.batch import PacketBatch

    frames = [tcp4("10.0.0.1", "10.0.0.2", 1000 + i, 80) for i in range(6)]
    batch = PacketBatch.from_rows(1, [(i, len(f), f, 7, i, "") for i, f in enumerate(frames)])
    origin = f"{CAPTURE_ORIGIN}run-1/0"
    lin = Lineage(origin, 5, 0)
    marks = Watermarks()
    assert drop_replayed(batch, lin, marks) is batch  # nothing delivered yet
    marks.advance(Lineage(origin, 2, 0))  # seqs 0..2 went through before the kill
    kept = drop_replayed(batch, lin, marks)
    assert [seq for _, seq in kept.packet_ids()] == [3, 4, 5]
    assert not marks.is_new(Lineage(origin, 2, 0))  # a batch of only repeats: skipped whole
    other = Watermarks({f"{CAPTURE_ORIGIN}run-2/0": (9, 0)})  # another replay: no dedup
    assert drop_replayed(batch, lin, other) is batch
    assert drop_replayed(batch, Lineage("fw/0", 9, 0), marks) is batch  # a function's output
