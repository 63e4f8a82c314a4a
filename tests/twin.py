"""One function twice: its batch path and its per-packet path, side by side.

The NAT and the load balancer decide most packets on a batch path
(`fast_path = True`) and keep the per-packet path they had before it
(`fast_path = False`) as the reference. A `Twin` runs every batch through
both, each core with its own state, and asserts that they agree on
everything a core gives: ports, reasons, rewritten bytes, records, metrics,
the state writes of every batch (keys and values, deletes included), the
key hashes, and at the end the whole state.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from snf.core.contract import Decisions, NetworkFunction
from snf.core.tables import BatchState
from snf.packet.batch import PacketBatch
from snf.packet.capture_file import read_capture
from snf.packet.parse import parse_packet_batch
from tests.harness import JsonStore

__all__ = ["CAPTURES", "Out", "Twin", "capture", "looped"]

ROOT = Path(__file__).resolve().parents[1]
# Every shared real capture (not the sealed evaluation set) and every bundled one.
CAPTURES = sorted(
    [Path(p) for p in glob.glob(str(ROOT.parent / "shared" / "traffic" / "*.pcap"))]
    + [Path(p) for p in glob.glob(str(ROOT / "pipelines" / "captures" / "*.pcapng"))]
)
Out = tuple[str, str, bytes]  # port, reason, packet as it leaves
NS = 1_000_000_000


def capture(path: Path) -> tuple[int, list[tuple[int, bytes]]]:
    """(linktype, [(ts_ns, frame)]) of a pcap or pcapng file."""
    packets = list(read_capture(path))
    return packets[0].linktype, [(p.ts_ns, p.data) for p in packets]


def looped(
    packets: Sequence[tuple[int, bytes]], shifts: Iterable[float]
) -> list[tuple[int, bytes]]:
    """The packets again for every shift (seconds added to their times): 0 replays
    them at the same times, as `snf run -l` does; a long shift lets state expire."""
    return [(ts + round(s * NS), f) for s in shifts for ts, f in packets]


def _outcome(core: NetworkFunction, batch: PacketBatch, stores: dict[str, JsonStore]) -> Any:
    headers = parse_packet_batch(batch)
    state = BatchState(dict(stores), deferred=True)
    d: Decisions = core.process(batch, headers, state)
    writes = {table: dict(w) for table, w in state.pending().items()}
    state.apply()
    records = {port: r for port, r in d.records.items() if r}
    metrics = {name: n for name, n in d.metrics.items() if n}
    return d.ports, d.reasons, d.replaced, records, metrics, writes


class Twin:
    """`make()` twice, fast path on and off, each core with its own state."""

    def __init__(
        self, make: Callable[[], NetworkFunction], partitions: int = 1, linktype: int = 1
    ) -> None:
        self.partitions = partitions
        self.reconfigure(make)
        self.stores = [{t: JsonStore() for t in make().tables} for _ in range(2)]
        self.linktype = linktype
        self.seq = 0
        self.batches = 0

    def reconfigure(self, make: Callable[[], NetworkFunction]) -> None:
        """New cores (a new config, as a restarted worker), the same state."""
        self.fast, self.each = make(), make()
        self.each.fast_path = False  # type: ignore[attr-defined]
        assert self.fast.fast_path  # type: ignore[attr-defined]
        for core in (self.fast, self.each):
            core.partitions = self.partitions

    def __call__(self, packets: Sequence[tuple[int, bytes]], batch_size: int = 512) -> list[Out]:
        out: list[Out] = []
        for start in range(0, len(packets), batch_size):
            out.extend(self.batch(packets[start : start + batch_size]))
        return out

    def batch(self, packets: Sequence[tuple[int, bytes]]) -> list[Out]:
        rows = [(ts, len(f), f, 1, self.seq + i, "") for i, (ts, f) in enumerate(packets)]
        self.seq += len(rows)
        self.batches += 1
        batch = PacketBatch.from_rows(self.linktype, rows)
        hashes = [
            list(core.key_hashes(batch, parse_packet_batch(batch)))
            for core in (self.fast, self.each)
        ]
        assert hashes[0] == hashes[1], "key hashes differ"
        fast = _outcome(self.fast, batch, self.stores[0])
        each = _outcome(self.each, batch, self.stores[1])
        for what, a, b in zip(
            ("ports", "reasons", "replaced", "records", "metrics", "writes"),
            fast,
            each,
            strict=True,
        ):
            assert a == b, f"batch {self.batches}: {what} differ"
        ports, reasons, replaced = each[:3]
        return [
            (port, reason, replaced.get(i, f))
            for i, (port, reason, (_, f)) in enumerate(zip(ports, reasons, packets, strict=True))
        ]

    def assert_same_state(self) -> None:
        for table in self.stores[0]:
            assert self.stores[0][table].data == self.stores[1][table].data, table

    def table(self, name: str) -> dict[bytes, Any]:
        return self.stores[1][name].data
