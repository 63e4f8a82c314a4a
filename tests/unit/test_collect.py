"""Collector: dedup by packet id, conflicts, and the result files (pcapng, JSON Lines)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from snf.egress import spool
from snf.egress.collector import Collector
from snf.packet.batch import PacketBatch
from snf.packet.capture_file import read_capture
from snf.packet.heads import cut_heads
from snf.packet.linktypes import LINKTYPE_ETHERNET, LINKTYPE_RAW
from tests.packets import tcp4, udp4

EGRESS = ("", "egress")
DROP = ("fw", "drop")
ALERTS = ("ids", "alerts")
T0 = 1_700_000_000 * 10**9
SRC_A = 0x00AB_CDEF_0123_4567
SRC_B = 0x7000_0000_0000_0001  # larger than SRC_A


def _row(sid: int, seq: int, reason: str = "", data: bytes | None = None) -> tuple:
    """(ts_ns, orig_len, data, source, seq, reason), every field derived from the id."""
    data = data if data is not None else tcp4(sport=1000 + seq % 50000, payload=bytes(seq % 9))
    ts = T0 + (sid % 1000) * 10**6 + seq * 1_001
    return (ts, len(data) + 3 + seq % 5, data, sid, seq, reason)


def _batch(rows: list[tuple], linktype: int = LINKTYPE_ETHERNET) -> PacketBatch:
    return PacketBatch.from_rows(linktype, rows)


def test_duplicates_are_dropped_and_counted() -> None:
    col = Collector()
    rows = [_row(SRC_A, i) for i in range(5)]
    assert col.add(EGRESS, _batch(rows)) == 5
    assert col.add(EGRESS, _batch(rows[1:3])) == 0
    assert col.add(EGRESS, _batch([rows[4], _row(SRC_A, 5)])) == 1
    assert (col.total, col.count(EGRESS), col.duplicates, col.conflicts) == (6, 6, 3, 0)


def test_same_id_on_two_terminals_is_a_conflict_kept_on_both() -> None:
    # Fan-out legitimately sends one id to two terminals; each keeps its copy.
    col = Collector()
    col.add(EGRESS, _batch([_row(SRC_A, 1), _row(SRC_A, 2)]))
    col.add(DROP, _batch([_row(SRC_A, 2, "default"), _row(SRC_A, 3, "default")]))
    col.add(DROP, _batch([_row(SRC_A, 3, "default")]))  # a plain duplicate, same port
    assert col.conflicts == 1
    assert col.duplicates == 1
    assert col.count(EGRESS) == 2 and col.count(DROP) == 2
    assert col.total == 3


def test_same_seq_from_two_sources_is_two_packets() -> None:
    col = Collector()
    col.add(EGRESS, _batch([_row(SRC_A, 7), _row(SRC_B, 7)]))
    assert (col.total, col.duplicates, col.conflicts) == (2, 0, 0)


def _comments(path: Path) -> list[str | None]:
    """opt_comment of each Enhanced Packet Block, walking the little-endian blocks."""
    raw = path.read_bytes()
    out: list[str | None] = []
    off = 0
    while off < len(raw):
        btype, blen = struct.unpack_from("<II", raw, off)
        if btype == 6:
            caplen = struct.unpack_from("<I", raw, off + 20)[0]
            opt = off + 28 + caplen + (-caplen & 3)
            comment = None
            while opt < off + blen - 4:
                code, length = struct.unpack_from("<HH", raw, opt)
                if code == 0:
                    break
                if code == 1:
                    comment = raw[opt + 4 : opt + 4 + length].decode()
                opt += 4 + length + (-length & 3)
            out.append(comment)
        off += blen
    return out


def test_write_pcapng_sorts_by_source_then_seq_with_exact_fields(tmp_path: Path) -> None:
    eth = {(s, q): _row(s, q) for s in (SRC_A, SRC_B) for q in (0, 3, 11, 100)}
    raw = {
        (SRC_A, q): _row(SRC_A, q, data=udp4(sport=q + 1, ether=False, payload=b"x" * q))
        for q in (1, 2, 50)
    }
    col = Collector()
    # Arrival order scrambled: later sources and seqs first, link types interleaved.
    col.add(EGRESS, _batch([eth[(SRC_B, 100)], eth[(SRC_B, 0)], eth[(SRC_A, 11)]]))
    col.add(EGRESS, _batch([raw[(SRC_A, 50)], raw[(SRC_A, 1)]], LINKTYPE_RAW))
    col.add(EGRESS, _batch([eth[(SRC_B, 11)], eth[(SRC_A, 100)], eth[(SRC_A, 0)]]))
    col.add(EGRESS, _batch([raw[(SRC_A, 2)]], LINKTYPE_RAW))
    col.add(EGRESS, _batch([eth[(SRC_B, 3)], eth[(SRC_A, 3)]]))
    col.add(DROP, _batch([_row(SRC_A, 999, "default")]))  # another port: not in this file

    path = tmp_path / "out.pcapng"
    assert col.write_pcapng(path) == 11
    rows = {**eth, **raw}
    linktype = {pid: LINKTYPE_RAW if pid in raw else LINKTYPE_ETHERNET for pid in rows}
    order = sorted(rows)
    assert order[0] == (SRC_A, 0) and order[-1] == (SRC_B, 100)
    got = list(read_capture(path))
    assert [(p.ts_ns, p.orig_len, p.data, p.linktype) for p in got] == [
        (rows[pid][0], rows[pid][1], rows[pid][2], linktype[pid]) for pid in order
    ]
    comments = _comments(path)
    assert len(comments) == 11
    for pid, comment in zip(order, comments, strict=True):
        assert comment is not None and f"{pid[0]:016x}:{pid[1]}" in comment


def test_write_pcapng_of_a_side_port(tmp_path: Path) -> None:
    col = Collector()
    col.add(EGRESS, _batch([_row(SRC_A, 1)]))
    col.add(DROP, _batch([_row(SRC_A, 9, "default"), _row(SRC_A, 4, "rule:2")]))
    path = tmp_path / "drops.pcapng"
    assert col.write_pcapng(path, DROP) == 2
    assert [p.ts_ns for p in read_capture(path)] == [_row(SRC_A, 4)[0], _row(SRC_A, 9)[0]]


def test_write_events_one_file_per_side_port_sorted_by_id(tmp_path: Path) -> None:
    col = Collector()
    col.add(EGRESS, _batch([_row(SRC_A, 0), _row(SRC_A, 5)]))
    drops = [_row(SRC_B, 2, "rule:1"), _row(SRC_A, 9, "default"), _row(SRC_A, 3, "malformed")]
    col.add(DROP, _batch(drops[:1]))
    col.add(DROP, _batch(drops[1:]))
    col.add(ALERTS, _batch([_row(SRC_A, 1, "scan")], LINKTYPE_RAW))

    out = tmp_path / "events"
    written = col.write_events(out)
    assert sorted(p.name for p in out.iterdir()) == ["fw.drop.jsonl", "ids.alerts.jsonl"]
    assert sorted(written) == sorted(out.iterdir())

    lines = [json.loads(x) for x in (out / "fw.drop.jsonl").read_text().splitlines()]
    expected = [drops[2], drops[1], drops[0]]  # by (source, seq): A:3, A:9, B:2
    assert len(lines) == 3
    for line, (ts, orig, _, sid, seq, reason) in zip(lines, expected, strict=True):
        assert line == {
            "ts": ts / 1e9,
            "ts_ns": ts,
            "packet_id": f"{sid:016x}:{seq}",
            "function": "fw",
            "port": "drop",
            "reason": reason,
            "len": orig,
        }
    alert = json.loads((out / "ids.alerts.jsonl").read_text())
    assert (alert["function"], alert["port"], alert["reason"]) == ("ids", "alerts", "scan")


def test_write_events_without_side_ports_writes_nothing(tmp_path: Path) -> None:
    col = Collector()
    col.add(EGRESS, _batch([_row(SRC_A, 0)]))
    assert col.write_events(tmp_path / "ev") == []
    assert list((tmp_path / "ev").iterdir()) == []


def _shuffled_batches(n: int, per: int, seed: int) -> list[PacketBatch]:
    """Packets of two sources in scrambled order, some delivered twice."""
    rng = np.random.default_rng(seed)
    ids = [(SRC_A if i % 3 else SRC_B, i) for i in range(n)]
    order = rng.permutation(n).tolist()
    order += rng.choice(n, n // 10).tolist()  # repeats, later
    rows = [_row(*ids[i], reason="default" if i % 7 == 0 else "") for i in order]
    return [_batch(rows[at : at + per]) for at in range(0, len(rows), per)]


def _files(col: Collector, where: Path) -> dict[str, bytes]:
    col.write_pcapng(where / "out.pcapng")
    col.write_pcapng(where / "drop.pcapng", DROP)
    col.write_events(where / "ev")
    return {str(p.relative_to(where)): p.read_bytes() for p in sorted(where.rglob("*.*"))}


@pytest.mark.parametrize("blocks", ["whole runs", "small blocks"])
def test_spilled_runs_merge_to_the_same_files(
    tmp_path: Path, blocks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny budget spills a sorted run every few batches; the merge by id must
    # give exactly what one sort in memory gives, whatever the blocks it reads.
    if blocks == "small blocks":
        monkeypatch.setattr(spool, "MERGE_BYTES", 1)
        monkeypatch.setattr(spool, "MIN_BLOCK_ROWS", 16)
    memory, spilled = Collector(), Collector(spool_bytes=4000)
    for i, batch in enumerate(_shuffled_batches(900, 37, seed=1)):
        where = DROP if i % 4 == 0 else EGRESS
        assert memory.add(where, batch) == spilled.add(where, batch)
    assert spilled._terminals[EGRESS].spool.spilled > 5
    assert (memory.total, memory.duplicates, memory.conflicts) == (
        spilled.total,
        spilled.duplicates,
        spilled.conflicts,
    )
    assert memory.reasons(DROP) == spilled.reasons(DROP)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    assert _files(memory, tmp_path / "a") == _files(spilled, tmp_path / "b")
    assert list(memory.packets[EGRESS]) == list(spilled.packets[EGRESS])  # arrival order


def test_heads_are_joined_from_spilled_copies(tmp_path: Path) -> None:
    frames = [udp4(sport=1000 + i, payload=bytes([i % 251]) * (60 + i % 40)) for i in range(600)]
    whole = PacketBatch.from_rows(
        LINKTYPE_ETHERNET, [(T0 + i, len(f), f, SRC_A, i, "") for i, f in enumerate(frames)]
    )
    heads = cut_heads(whole)
    ref, got = Collector(), Collector(spool_bytes=3000)
    for at in range(0, 600, 50):
        got.add_payloads(whole.select(range(at, at + 50)))
    for at in reversed(range(0, 600, 40)):  # heads come back in another order
        ref.add(EGRESS, whole.select(range(at, at + 40)))
        got.add(EGRESS, heads.select(range(at, at + 40)))
    assert got.wholes.spool.spilled > 3 and got._terminals[EGRESS].spool.spilled > 3
    got.write_pcapng(tmp_path / "got.pcapng")
    ref.write_pcapng(tmp_path / "ref.pcapng")
    assert (tmp_path / "got.pcapng").read_bytes() == (tmp_path / "ref.pcapng").read_bytes()
    assert got.wholes.missing == 0
