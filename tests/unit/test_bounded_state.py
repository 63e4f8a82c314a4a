"""Bounded state: sweeps at a packet-time grid, max_entries, the half-open timeout.

What must hold (snf.core.contract, "Bounded state"): sweeps depend on the
packets alone, so cutting a capture into batches of any size, or making the
core forget its derived indexes mid-stream (a takeover), changes no output,
record, metric or byte of state; a SYN flood leaves a table bounded by its
timeouts and by max_entries; flowmon exports idle flows without a later packet.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from snf.core.contract import EVICTED, NetworkFunction
from snf.core.engine import SWEEP_KEY, FunctionEngine
from snf.core.tables import CONTROL_TABLE
from snf.functions.firewall import Firewall, FirewallConfig
from snf.functions.flowmon import FlowMonitor, FlowMonitorConfig
from snf.functions.ratelimit import RateLimit, RateLimitConfig
from snf.packet.batch import PacketBatch
from snf.packet.linktypes import LINKTYPE_ETHERNET
from tests.harness import JsonStore, handle
from tests.packets import tcp4, udp4

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
Packets = list[tuple[int, bytes]]
Factory = Callable[[], NetworkFunction]


def mixed_capture(seed: int = 7, n_flood: int = 400) -> Packets:
    """A SYN flood, answered TCP sessions, UDP flows with long gaps, over ~20 minutes
    of packet time, with a few timestamps stepping back."""
    rng = random.Random(seed)
    out: Packets = []
    for i in range(n_flood):  # distinct sources, one bare SYN each
        src = f"198.18.{i // 250}.{i % 250 + 1}"
        out.append((T0 + rng.randrange(0, 1200 * NS), tcp4(src, "10.0.0.2", 1024 + i, 80, "S")))
    for i in range(40):  # sessions: some closed, some left idle
        c, port = f"10.1.0.{i + 1}", 20000 + i
        t = T0 + rng.randrange(0, 900 * NS)
        out += [
            (t, tcp4(c, "203.0.113.5", port, 443, "S")),
            (t + 1000, tcp4("203.0.113.5", c, 443, port, "SA")),
            (t + 2000, tcp4(c, "203.0.113.5", port, 443, "A", b"x" * i)),
        ]
        for k in range(rng.randrange(1, 6)):  # bursts with gaps of up to 400 s
            t += rng.randrange(1, 400) * NS
            out.append((t, tcp4(c, "203.0.113.5", port, 443, "PA", b"y" * k)))
            out.append((t + 500, tcp4("203.0.113.5", c, 443, port, "A")))
        if i % 3 == 0:
            out.append((t + 10**6, tcp4(c, "203.0.113.5", port, 443, "FA")))
            out.append((t + 2 * 10**6, tcp4("203.0.113.5", c, 443, port, "FA")))
    for i in range(30):
        t = T0 + rng.randrange(0, 1000 * NS)
        for _ in range(rng.randrange(1, 5)):
            t += rng.randrange(1, 200) * NS
            out.append((t, udp4(f"10.2.0.{i + 1}", "192.0.2.53", 5000 + i, 53)))
    out.sort(key=lambda p: p[0])
    for j in range(5, len(out), 97):  # packet time may step back a little
        out[j] = (out[j][0] - 3 * NS, out[j][1])
    return out


class Run:
    """A core in a FunctionEngine with a control table, batch by batch."""

    def __init__(self, factory: Factory, sweep_limit: int | None = None) -> None:
        self.core = factory()
        self.engine = FunctionEngine(self.core)
        if sweep_limit is not None:
            self.engine.sweep_limit = sweep_limit
        self.stores = {name: JsonStore() for name in (*self.core.tables, CONTROL_TABLE)}
        self.verdicts: list[tuple[str, str]] = []
        self.records: list[dict[str, Any]] = []
        self.seq = 0

    def feed(self, packets: Packets, batch_size: int, forget: Sequence[int] = ()) -> Run:
        for start in range(0, len(packets), batch_size):
            if start // batch_size in forget:
                self.engine.forget(0)  # as the worker does after a recovery's undo
            rows = []
            for ts, frame in packets[start : start + batch_size]:
                rows.append((ts, len(frame), frame, 1, self.seq, ""))
                self.seq += 1
            done = handle(self.engine, PacketBatch.from_rows(LINKTYPE_ETHERNET, rows), self.stores)
            self.verdicts += zip(done.ports, done.reasons, strict=True)
            for items in done.records.values():
                self.records += items
        return self

    def state(self) -> dict[str, dict[bytes, Any]]:
        return {name: dict(store.data) for name, store in self.stores.items()}

    def outcome(self) -> tuple:
        return self.verdicts, self.records, dict(self.engine.counters), self.state()


def firewall(**config: Any) -> Factory:
    base = {"default": "drop", "rules": [{"action": "allow"}], "max_entries": 60}
    return lambda: Firewall(FirewallConfig.model_validate({**base, **config}))


def flowmon(**config: Any) -> Factory:
    base = {"idle_timeout": 30, "active_timeout": 120, "max_entries": 20}
    return lambda: FlowMonitor(FlowMonitorConfig.model_validate({**base, **config}))


def ratelimit(**config: Any) -> Factory:
    base = {"rate": "1pps", "burst": 3, "max_entries": 20}
    return lambda: RateLimit(RateLimitConfig.model_validate({**base, **config}))


CORES = {
    "firewall": firewall(),
    "flowmon": flowmon(),
    "ratelimit": ratelimit(rate="8bps", burst=1500),
}


@pytest.mark.parametrize("name", sorted(CORES))
def test_batch_cuts_change_nothing_with_sweeps_on(name: str) -> None:
    packets = mixed_capture()
    runs = [Run(CORES[name], sweep_limit=5).feed(packets, size) for size in (1, 7, 64, 512)]
    reference = runs[0].outcome()
    for run in runs[1:]:
        assert run.outcome() == reference
    counters = reference[2]
    assert counters.get(EVICTED, 0) > 0  # max_entries was reached
    assert reference[3][CONTROL_TABLE][SWEEP_KEY] % NS == 0  # the grid is whole seconds


@pytest.mark.parametrize("name", sorted(CORES))
def test_forget_and_rebuild_mid_stream_changes_nothing(name: str) -> None:
    packets = mixed_capture(seed=11)
    plain = Run(CORES[name], sweep_limit=5).feed(packets, 16)
    forgetful = Run(CORES[name], sweep_limit=5).feed(packets, 16, forget=range(0, 10_000, 3))
    assert forgetful.outcome() == plain.outcome()


def syn_flood(n: int, seconds: float) -> Packets:
    """n bare SYNs from distinct sources, evenly over `seconds` of packet time."""
    step = round(seconds * NS / n)
    return [
        (T0 + i * step, tcp4(f"198.18.{i // 250}.{i % 250 + 1}", "10.0.0.2", 1024, 80, "S"))
        for i in range(n)
    ]


def test_firewall_half_open_entries_are_swept_after_tcp_syn() -> None:
    run = Run(firewall(max_entries=1_000_000)).feed(syn_flood(3000, 1800), 64)
    # One SYN every 0.6 s, each live for 120 s (+ up to one 1 s grid step).
    assert 190 <= len(run.stores["conn"].data) <= 203
    lazy = Run(firewall(max_entries=1_000_000, sweep_interval=0)).feed(syn_flood(3000, 1800), 64)
    assert len(lazy.stores["conn"].data) == 3000  # before: every entry stayed


def test_firewall_evicts_half_open_before_established() -> None:
    run = Run(firewall(max_entries=3, sweep_interval=0))
    c, s = "10.0.0.1", "10.0.0.2"
    run.feed([(T0, tcp4(c, s, 1, 80, "S")), (T0 + 1, tcp4(s, c, 80, 1, "SA"))], 1)  # answered
    run.feed([(T0 + 2, tcp4(c, s, 2, 80, "A"))], 1)  # mid-stream pickup: established
    run.feed([(T0 + 3, tcp4(c, s, 3, 80, "S"))], 1)  # half-open
    run.feed([(T0 + 4, tcp4(c, s, 4, 80, "S"))], 1)  # full: the half-open one goes
    ports = {key[-4:] for key in run.stores["conn"].data}
    assert ports == {b"\x00\x01\x00\x50", b"\x00\x02\x00\x50", b"\x00\x04\x00\x50"}
    run.feed([(T0 + 5, tcp4(c, s, 5, 80, "A"))], 1)  # full, half-open 4 goes
    run.feed([(T0 + 6, tcp4(c, s, 6, 80, "A"))], 1)  # full, none half-open: oldest (1)
    ports = {key[-4:] for key in run.stores["conn"].data}
    assert ports == {b"\x00\x02\x00\x50", b"\x00\x05\x00\x50", b"\x00\x06\x00\x50"}
    assert run.engine.counters[EVICTED] == 3


def test_flowmon_exports_idle_flows_from_the_sweep() -> None:
    run = Run(flowmon(max_entries=1_000_000, idle_timeout=15))
    packets = [
        (T0, udp4("10.0.0.1", "10.0.0.2", 1, 53)),
        (T0 + 10 * NS, udp4("10.0.0.1", "10.0.0.2", 2, 53)),
    ]
    packets += [(T0 + 20 * NS, udp4("10.0.0.3", "10.0.0.2", 3, 53))]
    run.feed(packets, 512)
    # At packet time 20 s the first flow has been idle > 15 s: exported already.
    assert [(r["sourceTransportPort"], r["flowEndReason"]) for r in run.records] == [
        (1, "idle timeout")
    ]
    assert run.records[0]["flowEndNanoseconds"] == T0


def test_flowmon_active_timeout_from_the_sweep_keeps_the_initiator() -> None:
    run = Run(flowmon(max_entries=1_000_000, idle_timeout=30, active_timeout=60))
    c, s = "10.0.0.1", "10.0.0.2"
    packets = [
        (T0 + k * 20 * NS, udp4(c, s, 7, 7) if k % 2 == 0 else udp4(s, c, 7, 7)) for k in range(9)
    ]
    run.feed(packets, 512)
    records = run.records
    assert [r["flowEndReason"] for r in records] == ["active timeout", "active timeout"]
    first, second = records
    assert (first["flowStartNanoseconds"], first["flowEndNanoseconds"]) == (T0, T0 + 60 * NS)
    # The next record starts at its first packet (80 s), not at the sweep, and keeps
    # the initiator: what the lazy path gives when the packet at 80 s finds the flow.
    assert (second["flowStartNanoseconds"], second["flowEndNanoseconds"]) == (
        T0 + 80 * NS,
        T0 + 140 * NS,
    )
    assert first["sourceIPv4Address"] == second["sourceIPv4Address"] == c
    assert first["packetDeltaCount"] + first["reversePacketDeltaCount"] == 4


def test_ratelimit_sweep_deletes_refilled_buckets_and_changes_no_verdict() -> None:
    packets = mixed_capture(seed=3)
    swept = Run(ratelimit(max_entries=1_000_000)).feed(packets, 64)
    lazy = Run(ratelimit(max_entries=1_000_000, sweep_interval=0)).feed(packets, 64)
    assert swept.verdicts == lazy.verdicts
    assert len(swept.stores["bucket"].data) < 10 < len(lazy.stores["bucket"].data)
