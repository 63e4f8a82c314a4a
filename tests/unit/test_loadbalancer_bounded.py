"""The load balancer's bounded state (functions/loadbalancer/bounds.py): sweeps of
conn (with back) and frag at the packet-time grid, max_entries evicting
unanswered flows first, the half-open timeout tcp_syn.

As tests/unit/test_bounded_state.py asks of every bounded core: cutting a
capture into batches of any size, or forgetting the derived indexes
mid-stream (a takeover), changes no verdict, byte, metric or byte of state;
here also on the per-packet path (fast_path False), which must agree with
the batch path.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from snf.core.contract import EVICTED
from snf.core.engine import SWEEP_KEY, FunctionEngine
from snf.core.tables import CONTROL_TABLE
from snf.functions.loadbalancer import LoadBalancer, LoadBalancerConfig
from snf.packet.batch import PacketBatch
from snf.packet.linktypes import LINKTYPE_ETHERNET
from tests.harness import JsonStore, handle
from tests.packets import fragments4, tcp4, udp4

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
Packets = list[tuple[int, bytes]]

FLOOD_VIP, WEB_VIP, DNS_VIP = "10.0.0.2", "203.0.113.5", "192.0.2.53"
WEB_BACKEND, DNS_BACKEND = "10.3.0.1", "10.3.0.2"  # one each: replies' sources are known


def config(**extra: Any) -> dict[str, Any]:
    services = [
        {
            "vip": f"{FLOOD_VIP}:80",
            "proto": "tcp",
            "backends": [{"address": f"10.3.1.{k}:8080"} for k in (1, 2, 3)],
        },
        {"vip": f"{WEB_VIP}:443", "proto": "tcp", "backends": [{"address": f"{WEB_BACKEND}:8443"}]},
        {"vip": f"{DNS_VIP}:53", "proto": "udp", "backends": [{"address": f"{DNS_BACKEND}:5353"}]},
    ]
    return {"services": services, "max_entries": 60, **extra}


def make(fast: bool = True, **extra: Any) -> Callable[[], LoadBalancer]:
    def factory() -> LoadBalancer:
        core = LoadBalancer(LoadBalancerConfig.model_validate(config(**extra)))
        core.fast_path = fast
        return core

    return factory


def _session(rng: random.Random, i: int, out: Packets) -> None:
    """A TCP session to the web VIP: answered by its backend or not, bursts with
    gaps of up to 400 s, a third of them closed."""
    c, port = f"10.1.0.{i + 1}", 20000 + i
    answered = i % 5 != 1
    t = T0 + rng.randrange(0, 900 * NS)
    out.append((t, tcp4(c, WEB_VIP, port, 443, "S")))
    if answered:
        out.append((t + 1000, tcp4(WEB_BACKEND, c, 8443, port, "SA")))
    out.append((t + 2000, tcp4(c, WEB_VIP, port, 443, "A", b"x" * i)))
    for k in range(rng.randrange(1, 6)):
        t += rng.randrange(1, 400) * NS
        out.append((t, tcp4(c, WEB_VIP, port, 443, "PA", b"y" * k)))
        if answered:
            out.append((t + 500, tcp4(WEB_BACKEND, c, 8443, port, "A")))
    if i % 3 == 0:
        out.append((t + 10**6, tcp4(c, WEB_VIP, port, 443, "FA")))
        out.append((t + 2 * 10**6, tcp4(WEB_BACKEND, c, 8443, port, "FA")))


def mixed_capture(seed: int = 7, n_flood: int = 400) -> Packets:
    """A SYN flood at one VIP, TCP sessions and UDP flows (some answered, some
    not) at two others, fragmented datagrams, ~20 minutes of packet time, a few
    timestamps stepping back."""
    rng = random.Random(seed)
    out: Packets = []
    for i in range(n_flood):
        src = f"198.18.{i // 250}.{i % 250 + 1}"
        out.append((T0 + rng.randrange(0, 1200 * NS), tcp4(src, FLOOD_VIP, 1024 + i, 80, "S")))
    for i in range(40):
        _session(rng, i, out)
    for i in range(30):
        c, port = f"10.2.0.{i + 1}", 5000 + i
        t = T0 + rng.randrange(0, 1000 * NS)
        for _ in range(rng.randrange(1, 5)):
            t += rng.randrange(1, 200) * NS
            out.append((t, udp4(c, DNS_VIP, port, 53)))
            if i % 2:
                out.append((t + 700, udp4(DNS_BACKEND, c, 5353, port)))
    for i in range(12):  # first fragments recorded in frag, their later ones 0..40 s on
        t = T0 + rng.randrange(0, 1100 * NS)
        first, *rest = fragments4(f"10.4.0.{i + 1}", DNS_VIP, 7000 + i, 53, ip_id=i + 1)
        out.append((t, first))
        out += [(t + rng.randrange(0, 40) * NS, f) for f in rest]
    out.sort(key=lambda p: p[0])
    for j in range(5, len(out), 97):  # packet time may step back a little
        out[j] = (out[j][0] - 3 * NS, out[j][1])
    return out


class Run:
    """A core in a FunctionEngine with a control table, batch by batch."""

    def __init__(self, factory: Callable[[], LoadBalancer], sweep_limit: int = 5) -> None:
        self.core = factory()
        self.engine = FunctionEngine(self.core)
        self.engine.sweep_limit = sweep_limit
        self.stores = {name: JsonStore() for name in (*self.core.tables, CONTROL_TABLE)}
        self.out: list[tuple[str, str, bytes]] = []
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
            self.out += zip(done.ports, done.reasons, done.frames, strict=True)
        return self

    def table(self, name: str) -> dict[bytes, Any]:
        return dict(self.stores[name].data)

    def outcome(self) -> tuple:
        state = {name: self.table(name) for name in self.stores}
        return self.out, dict(self.engine.counters), state


def test_batch_cuts_and_paths_change_nothing_with_sweeps_on() -> None:
    packets = mixed_capture()
    runs = [Run(make()).feed(packets, size) for size in (1, 7, 64, 512)]
    runs += [Run(make(fast=False)).feed(packets, size) for size in (1, 64)]
    reference = runs[0].outcome()
    for run in runs[1:]:
        assert run.outcome() == reference
    out, counters, state = reference
    assert counters[EVICTED] > 0  # max_entries was reached
    assert counters["to_client"] > 100 and counters["to_backend"] > 500
    assert sum(frame != f for (_, _, frame), (_, f) in zip(out, packets, strict=True)) > 500
    assert state[CONTROL_TABLE][SWEEP_KEY] % NS == 0  # the grid is whole seconds
    assert len(state["back"]) <= len(state["conn"]) <= 60


@pytest.mark.parametrize("fast", [True, False])
def test_forget_and_rebuild_mid_stream_changes_nothing(fast: bool) -> None:
    packets = mixed_capture(seed=11)
    plain = Run(make(fast)).feed(packets, 16)
    forgetful = Run(make(fast)).feed(packets, 16, forget=range(0, 10_000, 3))
    assert forgetful.outcome() == plain.outcome()


def test_sweeps_change_no_verdict_when_nothing_expires() -> None:
    """Within every timeout, sweeps on and off give the same packets and state."""
    packets = [(t, f) for t, f in mixed_capture(seed=5) if t < T0 + 100 * NS]
    swept = Run(make(max_entries=1_000_000)).feed(packets, 64)
    lazy = Run(make(max_entries=1_000_000, sweep_interval=0)).feed(packets, 64)
    assert swept.out == lazy.out
    assert swept.table("conn") == lazy.table("conn") and swept.table("back") == lazy.table("back")


def test_sweeps_delete_expired_flows_with_their_back_entries() -> None:
    packets = mixed_capture(seed=3)
    swept = Run(make(max_entries=1_000_000)).feed(packets, 64)
    lazy = Run(make(max_entries=1_000_000, sweep_interval=0)).feed(packets, 64)
    assert [o[:2] for o in swept.out] == [o[:2] for o in lazy.out]  # no drop either way
    assert len(swept.table("conn")) < 100 < len(lazy.table("conn"))
    assert len(swept.table("back")) <= len(swept.table("conn"))
    assert swept.table("frag") == {} and len(lazy.table("frag")) > 0


def syn_flood(n: int, seconds: float) -> Packets:
    step = round(seconds * NS / n)
    return [
        (T0 + i * step, tcp4(f"198.18.{i // 250}.{i % 250 + 1}", FLOOD_VIP, 1024, 80, "S"))
        for i in range(n)
    ]


def test_half_open_flows_are_swept_after_tcp_syn() -> None:
    run = Run(make(max_entries=1_000_000)).feed(syn_flood(3000, 1800), 64)
    # One SYN every 0.6 s, each live for 120 s (+ up to one 1 s grid step).
    assert 190 <= len(run.table("conn")) == len(run.table("back")) <= 203
    lazy = Run(make(max_entries=1_000_000, sweep_interval=0)).feed(syn_flood(3000, 1800), 64)
    assert len(lazy.table("conn")) == 3000  # before: every entry stayed


def test_refreshed_flows_outlive_their_first_due() -> None:
    """The index is lazy about refreshes: a flow refreshed every 500 s (tcp 900)
    is never swept and keeps its one pick."""
    c = "10.1.0.1"
    packets: Packets = []
    for k in range(8):
        t = T0 + k * 500 * NS
        packets += [(t, tcp4(c, WEB_VIP, 1, 443, "A")), (t + 1, tcp4(WEB_BACKEND, c, 8443, 1, "A"))]
    run = Run(make()).feed(packets, 1)
    assert run.engine.counters["new"] == 1 and run.engine.counters["to_client"] == 8
    assert len(run.table("conn")) == 1


def test_eviction_order_unanswered_first_then_due_first() -> None:
    run = Run(make(max_entries=3, sweep_interval=0))
    c, v, b = "10.1.0.9", WEB_VIP, WEB_BACKEND

    def send(t: int, frame: bytes) -> None:
        run.feed([(T0 + t * NS, frame)], 1)

    def ports() -> set[int]:
        return {int.from_bytes(key[5:7], "big") for key in run.table("conn")}

    send(1, tcp4(c, v, 1, 443, "S"))
    send(1, tcp4(b, c, 8443, 1, "SA"))  # answered
    send(2, tcp4(c, v, 2, 443, "A"))  # mid-stream pickup: unanswered, due in 900 s
    send(3, tcp4(c, v, 3, 443, "S"))  # half-open: due in 120 s
    send(4, tcp4(c, v, 4, 443, "S"))  # full: the unanswered one due first (3) goes
    assert ports() == {1, 2, 4}
    send(5, tcp4(c, v, 5, 443, "A"))  # unanswered: 2 (902 s), 4 (124 s): 4 goes
    assert ports() == {1, 2, 5}
    send(6, tcp4(c, v, 6, 443, "A"))  # unanswered: 2 (902 s), 5 (905 s): 2 goes
    send(7, tcp4(b, c, 8443, 5, "A"))  # 5 answered
    assert ports() == {1, 5, 6}
    send(8, tcp4(b, c, 8443, 6, "A"))  # 6 answered: none unanswered now
    send(9, tcp4(c, v, 9, 443, "A"))  # due first: 1 (last seen at 1 s)
    assert ports() == {5, 6, 9}
    assert run.engine.counters[EVICTED] == 4
    # An evicted flow's back entry went with it: its late reply passes untouched.
    late = tcp4(b, c, 8443, 1, "A")
    send(10, late)
    assert run.out[-1] == ("pass", "", late)
    assert len(run.table("back")) == 3
