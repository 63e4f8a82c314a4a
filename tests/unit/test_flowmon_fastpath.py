"""The flow monitor's batch path (functions/flowmon/counting.py) against its
per-packet loop: the same verdicts, records, metrics and state writes, batch
after batch (tests/twin.py), on every capture looped with timeouts from the
default down to milliseconds, on test_flowmon's random traffic, on damaged
packets and damaged headers; and the same finish().
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from snf.core.tables import BatchState
from snf.functions.flowmon import FlowMonitor, FlowMonitorConfig
from snf.packet.batch import PacketBatch
from snf.packet.headers import Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from tests.packets import fragments4, icmp6_echo, tcp4, tcp6, udp4
from tests.twin import CAPTURES, Twin, capture, looped
from tests.unit.test_flowmon import C, S, _random_traffic, at

TIMEOUTS = [
    {},
    {"idle_timeout": 0.5, "active_timeout": 2},
    {"idle_timeout": 0.01, "active_timeout": 0.05},
]


def twin(linktype: int = 1, **config: Any) -> Twin:
    return Twin(lambda: FlowMonitor(FlowMonitorConfig.model_validate(config)), 1, linktype)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("timeouts", TIMEOUTS, ids=["default", "short", "tiny"])
def test_captures_looped(path: Path, timeouts: dict[str, float]) -> None:
    """Looped at the same times (as `snf run -l`), then later (flows idle), then again."""
    linktype, packets = capture(path)
    packets = looped(packets, [0, 0, 100, 100.25])
    for size in (512, 7):
        t = twin(linktype, **timeouts)
        t(packets, batch_size=size)
        records = t.finish(packets[-1][0] + 1)
        assert records["flows"]


@pytest.mark.parametrize("seed", [1, 2])
def test_random_traffic(seed: int) -> None:
    t = twin(idle_timeout=1, active_timeout=3)
    rnd = random.Random(seed)
    packets = _random_traffic(seed)
    pos = 0
    while pos < len(packets):
        size = rnd.choice([1, 5, 64, 512])
        t(packets[pos : pos + size])
        pos += size
    t.finish(packets[-1][0] + 1)


def test_damaged_packets() -> None:
    rnd = random.Random(4)
    good = [tcp4(C, S, 1, 2, "S"), tcp4(S, C, 2, 1, "FA"), udp4(C, S, 3, 4), tcp6(), icmp6_echo()]
    good += fragments4(C, S, 1, 2, bytes(40), frag_size=16)
    packets = []
    for i in range(3000):
        frame = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(0, 4)):
            frame[rnd.randrange(len(frame))] = rnd.randrange(256)
        packets.append((at(i * 0.01), bytes(frame[: rnd.randint(0, len(frame))])))
    t = twin(idle_timeout=0.05)
    t(packets, batch_size=200)
    t.finish(at(100))


@pytest.mark.parametrize(
    "damage",
    [
        {"l3_off": [14] * 3},
        {"direction": [0, 1, 7, 0]},
        {"l3_off": [-1, 14, 14, 14]},
        {"l3_off": [10**6, 14, 14, 14]},
        {"flow": [b"k"] * 3},
        {"version": [6, 4, 4, 4]},
    ],
    ids=lambda d: ",".join(f"{k}{len(v)}" for k, v in d.items()),
)
def test_damaged_headers(damage: dict[str, list[Any]]) -> None:
    """Columns of the wrong length or values no parser gives: both alike."""
    frames = [tcp4(C, S, 1, 2, "S"), tcp4(S, C, 2, 1, "SA"), udp4(C, S, 3, 4), tcp4(C, S, 1, 2)]
    rows = [(at(i), len(f), f, 1, i, "") for i, f in enumerate(frames)]
    batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, rows)
    got = []
    for fast in (True, False):
        fm = FlowMonitor(FlowMonitorConfig())
        fm.fast_path = fast
        headers = parse_packet_batch(batch, vectorise=False)
        broken = Headers(**{f: list(getattr(headers, f)) for f in Headers.__dataclass_fields__})
        for name, value in damage.items():
            setattr(broken, name, value)
        state = BatchState(BatchState.memory(FlowMonitor.tables), deferred=True)
        d = fm.process(batch, broken, state)
        got.append((d.ports, d.reasons, d.records, d.metrics, state.pending()))
    assert got[0] == got[1]


def test_active_timeout_after_one_fin_keeps_it() -> None:
    """A FIN one way, then the active timeout, then the FIN the other way ends it."""
    t = twin(idle_timeout=10, active_timeout=3)
    flows = [(C, S, 1000 + k, 80) for k in range(30)]
    packets = [(at(0), tcp4(c, s, cp, sp, "S")) for c, s, cp, sp in flows]
    packets += [(at(1), tcp4(s, c, sp, cp, "SA")) for c, s, cp, sp in flows]
    packets += [(at(2), tcp4(c, s, cp, sp, "FA")) for c, s, cp, sp in flows]
    packets += [(at(4), tcp4(s, c, sp, cp, "A")) for c, s, cp, sp in flows]
    packets += [(at(5), tcp4(s, c, sp, cp, "FA")) for c, s, cp, sp in flows]
    outs = t(packets, batch_size=45)
    assert len(outs) == len(packets) and t.finish(at(6)) == {"flows": []}
