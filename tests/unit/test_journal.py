"""snf.guarantee.journal: the recovery plan after a crash at any point, lineage and watermarks.

The simulation below is the shell's protocol in miniature (snf.runtime.worker.app):
per event, a journal entry with before-images and the settled point, then the
state writes, then the outputs; the changelog is one ordered log, and a crash
keeps any prefix of it. Whatever the prefix, undo + skip + redo must end in the
state and the outputs of a run without the crash.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from snf.core.tables import BatchState, MemoryStore
from snf.guarantee.journal import (
    JOURNAL_PREFIX,
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

# --- a deterministic toy core: counts per key, emits (offset, key, count) -------------


def core(event: list[bytes], state: dict[bytes, Any]) -> tuple[dict[bytes, int], list[Any]]:
    writes, outputs = {}, []
    for key in event:
        n = writes.get(key, state.get(key) or 0) + 1
        writes[key] = n
        outputs.append((key, n))
    return writes, outputs


def events(n: int, seed: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    return [[b"k%d" % rng.randrange(6) for _ in range(rng.randrange(1, 4))] for _ in range(n)]


class Worker:
    """One owner of one partition: writes to `log` (the changelog) in order."""

    def __init__(self, log: list[tuple[bytes, Any]], state: dict[bytes, Any]) -> None:
        self.log = log
        self.state = state
        self.unacked: list[int] = []  # offsets whose outputs are not acknowledged
        self.outputs: dict[int, list[Any]] = {}  # offset -> outputs sent

    def settled(self, offset: int) -> int:
        return self.unacked[0] if self.unacked else offset

    def run(self, offset: int, event: list[bytes], marks: Watermarks) -> None:
        writes, outputs = core(event, self.state)
        before = {key: self.state.get(key) for key in writes}
        entry = JournalEntry(offset, before, marks.copy(), None, self.settled(offset))
        self.log.append((journal_key(offset), entry.encode()))
        for key, value in writes.items():
            self.log.append((key, value))
            self.state[key] = value
        self.outputs[offset] = outputs
        self.unacked.append(offset)


def restore(log: list[tuple[bytes, Any]]) -> dict[bytes, Any]:
    state: dict[bytes, Any] = {}
    for key, value in log:
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def recover(state: dict[bytes, Any]) -> Recovery:
    entries = [JournalEntry.decode(state[k]) for k in journal_keys() if k in state]
    plan = Recovery.plan(entries)
    for key, value in plan.undo.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return plan


def counts(state: dict[bytes, Any]) -> dict[bytes, Any]:
    return {k: v for k, v in state.items() if not k.startswith(JOURNAL_PREFIX)}


@pytest.mark.parametrize("seed", range(40))
def test_a_crash_anywhere_ends_as_a_run_without_it(seed: int) -> None:
    rng = random.Random(seed)
    evs = events(30, seed)
    reference = Worker([], {})
    for offset, ev in enumerate(evs):
        reference.run(offset, ev, Watermarks())

    log: list[tuple[bytes, Any]] = []
    first = Worker(log, {})
    crash_after = rng.randrange(1, len(evs))
    for offset in range(crash_after):
        first.run(offset, evs[offset], Watermarks())
        while first.unacked and rng.random() < 0.6:  # acknowledgements come late
            first.unacked.pop(0)
    durable = log[: rng.randrange(len(log) + 1)]  # the changelog keeps some prefix
    delivered = {o: out for o, out in first.outputs.items() if o < first.settled(crash_after)}

    state = restore(durable)
    plan = recover(state)
    second = Worker(durable, state)
    for offset in range(plan.start, len(evs)):  # events before plan.start are skipped
        second.run(offset, evs[offset], plan.marks)
    assert counts(second.state) == counts(reference.state)
    outputs = delivered | second.outputs  # a redo re-sends with the same lineage
    assert [outputs[o] for o in range(len(evs))] == [reference.outputs[o] for o in range(len(evs))]
    assert plan.start <= crash_after


def test_a_stale_entry_of_an_earlier_crash_is_undone_consistently() -> None:
    # Owner A crashes after offset 9 with 5..9 unsettled; B redoes 5..7 and crashes
    # too: A's entries for 8 and 9 are newer than B's and still in the ring.
    evs = events(12, 3)
    reference = Worker([], {})
    for offset, ev in enumerate(evs):
        reference.run(offset, ev, Watermarks())
    log: list[tuple[bytes, Any]] = []
    a = Worker(log, {})
    for offset in range(10):
        a.run(offset, evs[offset], Watermarks())
        if offset < 5:
            a.unacked.clear()
    state = restore(log)
    plan = recover(state)
    assert plan.start == 5 and plan.undone == 5
    b = Worker(log, state)
    for offset in range(5, 8):
        b.unacked.clear()  # 5 and 6 acknowledged: B's entry for 7 says settled 7
        b.run(offset, evs[offset], plan.marks)
    state = restore(log)
    plan = recover(state)
    assert plan.start == 7 and plan.undone == 3  # B's 7, and A's 8 and 9
    c = Worker(log, state)
    for offset in range(plan.start, len(evs)):
        c.run(offset, evs[offset], plan.marks)
    assert counts(c.state) == counts(reference.state)


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
    assert Lineage.from_headers({"snf-lineage": b"a|b/1|2|3"}) == Lineage("a|b/1", 2, 3)
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
