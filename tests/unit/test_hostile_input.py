"""No input record can stop a worker or steer its control data (issue 13).

Each hostile record is put in the middle of a good stream and handed to the
worker's real Processor: it lands in the dead-letter topic with the reason,
and everything else comes out exactly as from the stream without it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from snf import wire
from snf.guarantee import control_auth
from snf.guarantee.lineage import (
    CAPTURE_ORIGIN,
    LINEAGE_HEADER,
    MAX_CAPTURE_ORIGINS,
    Lineage,
    Watermarks,
    lineage_value,
)
from snf.packet.batch import PacketBatch
from snf.runtime.worker.attempts import Attempts
from snf.runtime.worker.processor import InputRecord, Processor
from tests.packets import tcp4
from tests.worker_harness import LoggedTable, Sends, input_records, make_processor, user_state

KEY = bytes(range(32))
GOOD = 6  # good batches, then the end marker
AT = 3  # where the hostile record goes


def signed(record: InputRecord, key: bytes) -> InputRecord:
    raw = lineage_value(record.headers)
    assert raw is not None and record.value is not None
    tag = control_auth.sign(key, raw, record.value)
    headers = [*record.headers, (control_auth.AUTH_HEADER, tag)]  # type: ignore[misc]
    return InputRecord(record.partition, record.offset, record.value, headers)


def good(key: bytes | None = None) -> list[InputRecord]:
    records = input_records(GOOD, random.Random(11))
    return [signed(r, key) for r in records] if key else records


def run(records: Sequence[InputRecord], key: bytes | None = None, **kw: object) -> tuple:
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends)
    if key is not None or kw:
        processor = Processor(
            processor.fn,
            _plan(processor),
            table,
            sends,
            control_key=key,
            **kw,  # type: ignore[arg-type]
        )

    async def go() -> None:
        for offset, r in enumerate(records):
            await processor.handle(InputRecord(0, offset, r.value, r.headers))

    asyncio.run(go())
    return processor, table, sends


def _plan(processor: Processor):  # type: ignore[no-untyped-def]
    from snf.pipeline.routing import plan_pipeline

    return plan_pipeline(processor.outputs.plan.pipeline)


def outputs(sends: Sends) -> list[tuple[str, int, bytes]]:
    return [(s.topic, s.partition, s.value) for s in sends.sent if not s.topic.endswith(".dlq")]


def dead_letters(sends: Sends) -> list[dict[str, bytes]]:
    return [dict(s.headers) for s in sends.sent if s.topic.endswith(".dlq")]


def control(end_ts: object, expected: object = 1) -> bytes:
    return b'SNFC{"flush": "x", "end_ts_ns": %s, "expected": %s}' % (
        str(end_ts).encode(),
        str(expected).encode(),
    )


def batch(seq: int) -> bytes:
    frame = tcp4("10.9.9.9", "192.0.2.9", 4444, 80, flags="S")
    return wire.encode(PacketBatch.from_rows(1, [(1, len(frame), frame, 7, seq, "")], batch_id=0))


def lineage(raw: bytes) -> list[tuple[str, bytes]]:
    return [(LINEAGE_HEADER, raw)]


DIGITS_4300 = b"capture:t/0|" + b"9" * 4300 + b"|0"
FAR = b"capture:test/0|%d|0" % (1 << 40)


HOSTILE: dict[str, tuple[bytes | None, list[tuple[str, bytes]] | None, str]] = {
    "tombstone": (None, None, "WireError"),
    "deep JSON": (b"SNFC" + b"[" * 2000 + b"]" * 2000, None, "WireError"),
    "huge control": (b"SNFC" + b" " * 10_000 + b"{}", None, "WireError"),
    "end_ts_ns Infinity": (control("Infinity"), None, "WireError"),
    "expected 1e400": (control(5, "1e400"), None, "WireError"),
    "end_ts_ns 2^70": (control(1 << 70), None, "WireError"),
    "records on a packet topic": (wire.encode_record_blocks([{"ts_ns": 1}])[0], None, "WireError"),
    "truncated batch": (batch(10**6)[:40], None, "WireError"),
    "lineage without |": (batch(10**6), lineage(b"garbage"), "LineageError"),
    "lineage not UTF-8": (batch(10**6), lineage(b"\xff\xfe/0|1|0"), "LineageError"),
    "lineage not an integer": (batch(10**6), lineage(b"capture:t/0|x|0"), "LineageError"),
    "lineage of 4,300 digits": (batch(10**6), lineage(DIGITS_4300), "LineageError"),
    "lineage at 2^63": (batch(10**6), lineage(b"capture:test/0|%d|0" % (1 << 63)), "LineageError"),
    "origin not upstream": (batch(10**6), lineage(b"evil/0|1|0"), "Untrusted"),
    "capture lineage past the batch": (batch(10**6), lineage(FAR), "Untrusted"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_record_is_dead_lettered_and_changes_nothing_else(name: str) -> None:
    value, headers, kind = HOSTILE[name]
    records = good()
    _, clean_table, clean = run(records)
    hostile = [*records[:AT], InputRecord(0, 0, value, headers), *records[AT:]]
    processor, table, sends = run(hostile)
    assert outputs(sends) == outputs(clean)
    assert user_state(table).keys() == user_state(clean_table).keys()
    [why] = dead_letters(sends)
    assert why["snf.errors.class"] == kind.encode()
    assert why["snf.errors.offset"] == str(AT).encode()
    assert why["snf.errors.topic"] == b"snf.j.ingress"
    assert processor.counters["dead_letters"] == 1 and processor.done[0] == len(hostile) - 1


def test_with_a_control_key_forged_control_data_drops_and_ends_nothing() -> None:
    records = good(KEY)
    _, clean_table, clean = run(records, KEY)
    assert outputs(clean) == outputs(run(good())[2])  # signing changes no output
    forged = [
        # an end marker in the middle of the stream: would end and export every flow
        InputRecord(0, 0, wire.encode_end_marker(wire.EndMarker("forged", 10**12)), None),
        # a watermark far ahead: would drop every later batch as a duplicate
        InputRecord(0, 0, batch(10**9), lineage(b"capture:test/0|%d|0" % 10**9)),
        # a genuine tag copied onto another value
        InputRecord(0, 0, batch(10**6), [*records[1].headers]),  # type: ignore[misc]
    ]
    forged += [
        InputRecord(0, 0, wire.encode_end_marker(wire.EndMarker(f"f{i}", 10**12)), None)
        for i in range(1000)
    ]
    processor, table, sends = run([*records[:AT], *forged, *records[AT:]], KEY)
    assert outputs(sends) == outputs(clean)
    assert user_state(table) == user_state(clean_table)  # no flush id kept either
    assert {w["snf.errors.class"] for w in dead_letters(sends)} == {b"Untrusted"}
    assert processor.counters["dead_letters"] == len(forged)


def test_outputs_are_signed_with_the_control_key() -> None:
    _, _, sends = run(good(KEY), KEY)
    for s in sends.sent:
        raw = lineage_value(s.headers)
        assert raw is not None and s.lineage is not None
        tag = lineage_value(s.headers, control_auth.AUTH_HEADER)
        assert control_auth.verify(KEY, raw, s.value, tag)


def test_a_record_that_took_two_processes_down_is_dead_lettered(tmp_path: Path) -> None:
    path = tmp_path / "attempts"
    records = good()
    for _ in range(2):  # two processes died while on offset AT
        attempts = Attempts(path)
        attempts.start(0, AT)
        attempts.close()
    processor, _, sends = run(records, attempts_path=path)
    [why] = dead_letters(sends)
    assert why["snf.errors.class"] == b"Crashed" and why["snf.errors.offset"] == str(AT).encode()
    assert processor.counters["dead_letters"] == 1
    # Handled records leave no suspect behind: a clean restart dead-letters nothing.
    _, _, again = run(records, attempts_path=path)
    assert not dead_letters(again)


def test_one_crash_is_tried_again(tmp_path: Path) -> None:
    path = tmp_path / "attempts"
    Attempts(path).start(0, AT)
    _, _, sends = run(good(), attempts_path=path)
    assert not dead_letters(sends)


def test_a_refused_engine_answer_is_dead_lettered(monkeypatch: pytest.MonkeyPatch) -> None:
    records = good()
    table, sends = LoggedTable(), Sends()
    processor, _ = make_processor(table, sends)
    real = processor.engine.handle
    calls = []

    def flaky(batch, state):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("flowmon emitted to undeclared port 'x'")
        return real(batch, state)

    monkeypatch.setattr(processor.engine, "handle", flaky)

    async def go() -> None:
        for r in records:
            await processor.handle(r)

    asyncio.run(go())
    [why] = dead_letters(sends)
    assert why["snf.errors.class"] == b"ValueError" and b"undeclared" in why["snf.errors.message"]
    assert processor.done[0] == len(records) - 1


def test_capture_sessions_remembered_are_bounded() -> None:
    marks = Watermarks({"fw/0": (1, 0)})
    for i in range(3 * MAX_CAPTURE_ORIGINS):
        marks.advance(Lineage(f"{CAPTURE_ORIGIN}s{i}/0", 5, 0))
    sessions = [o for o in marks.marks if o.startswith(CAPTURE_ORIGIN)]
    assert (
        len(sessions) == MAX_CAPTURE_ORIGINS
        and sessions[-1] == f"{CAPTURE_ORIGIN}s{3 * MAX_CAPTURE_ORIGINS - 1}/0"
    )
    assert "fw/0" in marks.marks  # an upstream function's mark is never dropped


def test_control_keys_are_64_hex_digits() -> None:
    assert len(control_auth.parse_key(control_auth.new_key())) == 32
    with pytest.raises(control_auth.ControlKeyError, match="64 hex digits"):
        control_auth.parse_key("abc")


def test_without_a_key_forged_end_ids_leave_a_bounded_control_table() -> None:
    records = good()
    forged = [
        InputRecord(0, 0, wire.encode_end_marker(wire.EndMarker(f"f{i}", 10**12, 1, "")), None)
        for i in range(1000)
    ]
    # Entry function, no key: an anonymous marker ends the partition (the documented
    # risk without a key); what matters here is that the table stays small.
    _, table, _ = run([*records[:AT], *forged, *records[AT:]])
    control = [k for k in user_state(table) if k.startswith(b"control")]
    assert 0 < len(control) <= 5, control  # open and ended lists, the sweep point
