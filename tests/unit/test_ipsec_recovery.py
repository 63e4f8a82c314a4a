"""ipsec through the worker's real Processor, crashed at any point: outbound sequence
numbers never repeat, and the replay window forgets nothing.

The crash model of test_journal.py: a crash keeps any prefix of the changelog
that contains every write the worker waited for (its `durable` calls), and
any message sent may be on the wire, acknowledged or not. A new Processor
restores that prefix and runs from offset 0.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from snf import wire
from snf.functions.ipsec.esp import EspTransform
from snf.guarantee.lineage import Lineage
from snf.packet.batch import PacketBatch
from snf.pipeline.loader import parse_pipeline
from snf.pipeline.routing import plan_pipeline
from snf.runtime.worker.processor import InputRecord, Processor
from tests.packets import ether, ip4, udp4
from tests.worker_harness import (
    LoggedTable,
    Send,
    Sends,
    outputs_by_lineage,
    restore,
    user_state,
)

OUT_KEY = bytes(range(1, 21))  # aes-gcm-128: key + salt
IN_KEY = bytes(range(101, 121))
SPI_OUT, SPI_IN = 0x2001, 0x1001
CAPTURE = "capture:test/0"
BLOCK = 16  # small, so that batches reserve often


def pipeline_text(direction: str) -> str:
    sel = "[{local: 10.1.0.0/16, remote: 10.2.0.0/16}]"
    common = f"local: 192.0.2.1, peer: 198.51.100.2, cipher: aes-gcm-128, selectors: {sel}"
    return (
        "name: v\npartitions: 1\nfunctions:\n  - name: gw\n    function: ipsec\n"
        f"    config:\n      direction: {direction}\n      seq_block: {BLOCK}\n      sas:\n"
        f"        - {{name: o, direction: out, spi: {SPI_OUT}, key_env: SNF_T_OUT, {common}}}\n"
        f"        - {{name: i, direction: in, spi: {SPI_IN}, key_env: SNF_T_IN, {common}}}\n"
    )


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNF_T_OUT", OUT_KEY.hex())
    monkeypatch.setenv("SNF_T_IN", IN_KEY.hex())


class Durable:
    """The worker's `durable` wait: what the changelog holds when it returns."""

    def __init__(self, table: LoggedTable) -> None:
        self.table, self.marks = table, [0]

    async def __call__(self) -> None:
        self.marks.append(len(self.table.log))


def processor(table: LoggedTable, sends: Sends, direction: str) -> tuple[Processor, Durable]:
    pipeline = parse_pipeline(pipeline_text(direction))
    durable = Durable(table)
    fn = pipeline.functions[0]
    return Processor(fn, plan_pipeline(pipeline), table, sends, durable=durable), durable


def records(frames: list[list[bytes]]) -> list[InputRecord]:
    out, seq = [], 0
    for offset, batch in enumerate(frames):
        rows = [(10**9 * (offset + 1) + k, len(f), f, 7, seq + k, "") for k, f in enumerate(batch)]
        seq += len(rows)
        value = wire.encode(PacketBatch.from_rows(1, rows, batch_id=offset))
        out.append(InputRecord(0, offset, value, [Lineage(CAPTURE, seq - 1, 0).header()]))
    return out


def cleartext(rng: random.Random, batches: int) -> list[list[bytes]]:
    return [
        [
            udp4(f"10.1.0.{rng.randrange(1, 9)}", "10.2.0.7", 4000 + n, 53, b"q%d.%d" % (b, n))
            for n in range(rng.randrange(1, 40))
        ]
        for b in range(batches)
    ]


def esp_packets(sends: list[Send]) -> Iterator[tuple[Lineage | None, bytes]]:
    """(lineage, ESP bytes) of every packet sent to egress."""
    for s in sends:
        if s.topic.endswith(".egress"):
            message = wire.decode(s.value)
            assert isinstance(message, PacketBatch)
            for frame in message.packets():
                yield s.lineage, frame[14 + 20 :]  # Ethernet, outer IPv4


def run(p: Processor, recs: list[InputRecord], sends: Sends, rng: random.Random | None) -> None:
    async def go() -> None:
        for r in recs:
            await p.handle(r)
            if rng is not None:
                sends.ack(0.4, rng)

    asyncio.run(go())


def decrypted(sends: list[Send]) -> dict[Lineage | None, list[bytes]]:
    """The inner packets per lineage, of the first copy of each (what consumers keep)."""
    esp, out = EspTransform("aes-gcm-128", OUT_KEY, SPI_OUT), {}
    for s in sends:
        if s.lineage in out:
            continue  # a redo's copy: skipped downstream by its lineage
        packets = [p for _, p in esp_packets([s])]
        if packets:
            out[s.lineage] = [esp.open(p, int.from_bytes(p[4:8], "big"))[1] for p in packets]
    return out


@pytest.mark.parametrize("seed", range(30))
def test_a_crash_anywhere_never_repeats_a_sequence_number(seed: int) -> None:
    rng = random.Random(seed)
    recs = records(cleartext(random.Random(500 + seed), 20))
    ref_sends = Sends()
    ref, _ = processor(LoggedTable(), ref_sends, "outbound")
    run(ref, recs, ref_sends, None)

    first_table, first_sends = LoggedTable(), Sends(auto_ack=False)
    first, durable = processor(first_table, first_sends, "outbound")
    run(first, recs[: rng.randrange(1, len(recs))], first_sends, rng)
    # The changelog keeps at least what the worker waited for, maybe more.
    kept = first_table.log[: rng.randrange(durable.marks[-1], len(first_table.log) + 1)]
    sends = Sends()
    second, _ = processor(restore(kept), sends, "outbound")
    run(second, recs, sends, None)

    wire_seqs = [int.from_bytes(p[4:8], "big") for _, p in esp_packets(first_sends.sent)]
    wire_seqs += [int.from_bytes(p[4:8], "big") for _, p in esp_packets(sends.sent)]
    assert len(wire_seqs) == len(set(wire_seqs)), "a sequence number went out twice"
    # Whatever the first copy of each message was, it carries the same packets.
    seen = decrypted([*first_sends.sent, *sends.sent])
    assert seen == decrypted(ref_sends.sent)
    # The new owner starts past every reservation, wasting at most the rest of a block.
    first_max = max(
        (int.from_bytes(p[4:8], "big") for _, p in esp_packets(first_sends.sent)), default=0
    )
    second_min = min(int.from_bytes(p[4:8], "big") for _, p in esp_packets(sends.sent))
    assert first_max < second_min <= first_max + BLOCK


def test_sequence_numbers_increase_per_sa_except_for_the_jump_of_a_takeover() -> None:
    rng = random.Random(7)
    recs = records(cleartext(rng, 12))
    table, sends = LoggedTable(), Sends()
    first, _ = processor(table, sends, "outbound")
    run(first, recs[:5], sends, None)
    before = [int.from_bytes(p[4:8], "big") for _, p in esp_packets(sends.sent)]
    assert before == list(range(1, len(before) + 1))  # 1, 2, 3, ... with no crash
    later = Sends()
    second, _ = processor(restore(table.log), later, "outbound")
    run(second, recs, later, None)  # skips 0..4 (settled), runs the rest
    after = [int.from_bytes(p[4:8], "big") for _, p in esp_packets(later.sent)]
    assert after == sorted(after) and after[0] > before[-1]
    assert after[0] - before[-1] <= BLOCK  # the rest of the old block, never more


def sealed(seqs: list[int]) -> list[bytes]:
    """ESP frames from the peer (B -> A) carrying inner packets, by sequence number."""
    esp = EspTransform("aes-gcm-128", IN_KEY, SPI_IN)
    frames = []
    for q in seqs:
        inner = udp4("10.2.0.7", "10.1.0.3", 53, 4000 + q, b"r%d" % q, ether=False)
        frames.append(ether(ip4("198.51.100.2", "192.0.2.1", 50, esp.seal(q, 4, inner))))
    return frames


def test_a_takeover_rejects_exactly_the_replays_the_old_owner_would_have() -> None:
    order = [1, 2, 3, 5, 8, 4, 1200, 13, 1199, 3, 7, 1500, 600, 1500, 476, 477, 1199]
    recs = records([sealed(order[:6]), sealed(order[6:11]), sealed(order[11:])])
    ref_sends = Sends()
    ref_table = LoggedTable()
    ref, _ = processor(ref_table, ref_sends, "inbound")
    run(ref, recs, ref_sends, None)
    assert ref.counters["drop:replay"] == 2 and ref.counters["drop:outside_window"] == 4

    for cut in range(1, len(recs)):
        table, sends = LoggedTable(), Sends()
        first, _ = processor(table, sends, "inbound")
        run(first, recs[:cut], sends, None)
        later = Sends()
        restored = restore(table.log)
        second, _ = processor(restored, later, "inbound")
        run(second, recs, later, None)
        # Every message (the drops with their reasons included) as without the crash,
        # and a redo's copies identical to the first: the window was journaled.
        assert outputs_by_lineage([*sends.sent, *later.sent]) == outputs_by_lineage(ref_sends.sent)
        assert user_state(restored) == user_state(ref_table)
