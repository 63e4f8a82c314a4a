"""Flow monitor core: records, timeouts, TCP end, flush, state writes, config, model.

Every test feeds crafted or captured (ts_ns, frame) packets through one
FlowMonitor, driven by a FunctionEngine, whose in-memory state persists across
batches, and checks the verdicts, the records on the `flows` port and the
records finish() emits at the end of input (Run.flush). The
independent model (tests.flowmon_model, dpkt + plain dicts) must produce the
same records on every real capture and on random crafted traffic.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from snf.core.engine import FunctionEngine
from snf.core.tables import CONTROL_TABLE, BatchState
from snf.functions.flowmon import FlowMonitor, FlowMonitorConfig
from snf.packet.batch import PacketBatch
from snf.packet.headers import KIND_IP, KIND_MALFORMED, Headers
from snf.packet.linktypes import LINKTYPE_ETHERNET
from snf.packet.parse import parse_packet_batch
from snf.wire import EndMarker
from tests.conftest import traffic_dir
from tests.flowmon_model import FlowModel
from tests.harness import JsonStore, handle
from tests.packets import (
    arp,
    ether,
    fragments4,
    fragments6,
    icmp4_echo,
    icmp4_error,
    icmp6_echo,
    ip4,
    read_pcap,
    tcp4,
    tcp6,
    udp4,
    udp6,
)

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
C, S = "10.0.0.1", "198.51.100.7"
CAPTURES = sorted(traffic_dir().glob("*.pcap"))  # never the sealed evaluation set
REASONS = ("idle timeout", "active timeout", "end of flow detected", "forced end")
Packets = list[tuple[int, bytes]]


def at(seconds: float) -> int:
    return T0 + round(seconds * NS)


class Run:
    """One flow monitor in a FunctionEngine, with state that persists across batches."""

    def __init__(self, linktype: int = LINKTYPE_ETHERNET, **config: Any) -> None:
        # The lazy path, as tests/flowmon_model.py models it, unless a test asks for
        # sweeps (tests/unit/test_bounded_state.py covers them).
        config.setdefault("sweep_interval", 0)
        self.fm = FlowMonitor(FlowMonitorConfig.model_validate(config))
        self.engine = FunctionEngine(self.fm)
        self.linktype = linktype
        self.store = JsonStore()
        self.stores = {"flows": self.store, CONTROL_TABLE: JsonStore()}
        self.ends = 0
        self.records: list[dict[str, Any]] = []
        self.writes: list[int] = []
        self.seq = 0

    def __call__(self, packets: Sequence[tuple[int, bytes]], batch_size: int = 512) -> list:
        out = []
        for start in range(0, len(packets), batch_size):
            rows = []
            for ts, frame in packets[start : start + batch_size]:
                rows.append((ts, len(frame), frame, 1, self.seq, ""))
                self.seq += 1
            batch = PacketBatch.from_rows(self.linktype, rows)
            done = handle(self.engine, batch, self.stores)
            assert not done.rewritten
            self.records.extend(done.records.get("flows", []))
            self.writes.append(done.writes)
            out.extend(zip(done.ports, done.reasons, strict=True))
        return out

    def flush(self, end_ts: int) -> list[dict[str, Any]]:
        """End of input at packet time end_ts: the engine finishes the core once."""
        self.ends += 1
        marker = EndMarker(f"end-{self.ends}", end_ts)
        out = self.engine.end_of_input(marker, 0, BatchState(self.stores))
        assert out is not None and set(out.records) <= {"flows"}
        return out.records.get("flows", [])

    @property
    def counters(self) -> dict[str, int]:
        return self.engine.counters

    @property
    def flows(self) -> dict[bytes, Any]:
        return self.store.data


def one(records: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(records) == 1, records
    return records[0]


def counts(record: dict[str, Any]) -> tuple[int, int, int, int]:
    keys = ("packetDeltaCount", "octetDeltaCount", "reversePacketDeltaCount")
    return (*(record[k] for k in keys), record["reverseOctetDeltaCount"])


# -- contract and config ------------------------------------------------------


def test_class_contract_and_registry() -> None:
    from snf.core.registry import get_function

    assert get_function("flowmon") is FlowMonitor
    assert FlowMonitor.kind == "flowmon"
    assert (FlowMonitor.ports, FlowMonitor.record_ports) == (("pass", "drop"), ("flows",))
    assert FlowMonitor.key == "flow" and FlowMonitor.tables == ("flows",)
    assert FlowMonitor.Config is FlowMonitorConfig


def test_config_defaults() -> None:
    config = FlowMonitorConfig()
    assert (config.idle_timeout, config.active_timeout) == (15, 300)
    assert all(f.description for f in FlowMonitorConfig.model_fields.values())


@pytest.mark.parametrize(
    ("config", "loc", "text"),
    [
        ({"idle_timeout": 0}, ("idle_timeout",), "greater than 0"),
        ({"active_timeout": -1}, ("active_timeout",), "greater than 0"),
        ({"idle_timeout": float("inf")}, ("idle_timeout",), "finite"),
        ({"active_timeout": float("nan")}, ("active_timeout",), "finite"),
        ({"idle_timeout": "soon"}, ("idle_timeout",), "number"),
        ({"idle": 5}, ("idle",), "Extra inputs"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], loc: tuple, text: str) -> None:
    with pytest.raises(ValidationError) as info:
        FlowMonitorConfig.model_validate(config)
    error = info.value.errors()[0]
    assert error["loc"] == loc and text in error["msg"], error


# -- records ------------------------------------------------------------------


def test_tcp_session_record_uses_ipfix_names_and_ip_octets() -> None:
    run = Run()
    syn = tcp4(C, S, 40000, 80, "S")
    data = tcp4(S, C, 80, 40000, "PA", b"x" * 100, vlan=7) + bytes(4)  # tag and trailer: not IP
    verdicts = run(
        [
            (at(0), syn),
            (at(0.1), data),
            (at(0.2), tcp4(C, S, 40000, 80, "FA")),
            (at(0.3), tcp4(S, C, 80, 40000, "FA")),
        ]
    )
    assert verdicts == [("pass", "")] * 4
    assert one(run.records) == {
        "sourceIPv4Address": C,
        "destinationIPv4Address": S,
        "sourceTransportPort": 40000,
        "destinationTransportPort": 80,
        "protocolIdentifier": 6,
        "flowStartNanoseconds": at(0),
        "flowEndNanoseconds": at(0.3),
        "packetDeltaCount": 2,
        "octetDeltaCount": 80,  # two 40-byte IP packets
        "reversePacketDeltaCount": 2,
        "reverseOctetDeltaCount": 140 + 40,
        "tcpControlBits": 0x02 | 0x18 | 0x11,  # union over both directions
        "flowEndReason": "end of flow detected",
        "ts_ns": at(0.3),
    }
    assert run.flows == {} and run.writes == [0]  # born and ended in one batch: no write


def test_ipv6_field_names_and_octets() -> None:
    run = Run()
    # IPv6 octets: payload length (hop-by-hop header + UDP) + 40.
    hop_by_hop = [(0, bytes(7))]
    run([(at(0), udp6("2001:db8::1", "2001:db8:0:0:1::2", 5353, 53, bytes(10), ext=hop_by_hop))])
    run([(at(1), tcp6("fd00::5", "2001:db8::1", 443, 5000, "A"))])
    records = run.flush(at(2))
    assert [(r["sourceIPv6Address"], r["destinationIPv6Address"]) for r in records] == [
        ("2001:db8::1", "2001:db8::1:0:0:2"),  # RFC 5952: the first of equal zero runs
        ("fd00::5", "2001:db8::1"),
    ]
    assert not any("sourceIPv4Address" in r for r in records)
    assert [counts(r) for r in records] == [(1, 8 + 18 + 40, 0, 0), (1, 60, 0, 0)]
    assert [r["protocolIdentifier"] for r in records] == [17, 6]


@pytest.mark.parametrize(
    ("address", "text"),
    [
        ("::", "::"),
        ("::1", "::1"),
        ("1::", "1::"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),  # one zero group stays 0
        ("fe80::a:0:0:0:b", "fe80:0:0:a::b"),  # the longest zero run becomes ::
        ("::ffff:1.2.3.4", "::ffff:102:304"),  # never dotted quads (libc-dependent)
        ("::1.2.3.4", "::102:304"),
    ],
)
def test_ipv6_text_is_rfc5952_hex(address: str, text: str) -> None:
    run = Run()
    run([(at(0), udp6(address, "2001:db8::9", 1, 2))])
    record = one(run.flush(at(0)))
    assert text in (record["sourceIPv6Address"], record["destinationIPv6Address"])


def test_icmp_ports_and_fragments() -> None:
    run = Run()
    frags = fragments4(C, S, 5000, 53, bytes(40), ip_id=9, frag_size=16)
    run(
        [
            (at(0), icmp4_echo(C, S, ident=77)),
            (at(0.1), icmp4_echo(S, C, ident=77, reply=True)),
            (at(0.2), icmp4_error(S, C, type_=3, code=3)),
            *[(at(0.3), f) for f in frags],
            (at(0.4), icmp6_echo("2001:db8::1", "2001:db8::2", ident=5)),
        ]
    )
    records = {
        (r["protocolIdentifier"], r["sourceTransportPort"], r["destinationTransportPort"]): r
        for r in run.flush(at(1))
    }
    assert set(records) == {(1, 77, 77), (1, 0, 0), (17, 5000, 53), (17, 0, 0), (58, 5, 5)}
    assert counts(records[1, 77, 77])[::2] == (1, 1)  # echo request forward, reply reverse
    assert records[1, 0, 0]["sourceIPv4Address"] == S  # non-echo ICMP: by address pair
    assert records[17, 5000, 53]["packetDeltaCount"] == 1  # first fragment: the flow's ports
    assert records[17, 0, 0]["packetDeltaCount"] == len(frags) - 1  # later ones: ports 0


def test_non_ip_passes_uncounted_and_malformed_drops() -> None:
    run = Run()
    verdicts = run(
        [
            (at(0), arp()),
            (at(0), ether(ip4(C, S, 6, b"\x13\x88\x01\xbb"))),  # TCP header cut short
            (at(0), b"\x00" * 13),
            (at(0), udp4(C, S, 1, 2)),
        ]
    )
    assert verdicts == [("pass", ""), ("drop", "malformed"), ("drop", "malformed"), ("pass", "")]
    assert [counts(r) for r in run.flush(at(0))] == [(1, 28, 0, 0)]
    assert run.counters == {
        "in": 4,
        "pass": 2,
        "drop:malformed": 2,
        "flows": 1,
        "flows:forced end": 1,
        "flushes": 1,
    }


@pytest.mark.parametrize(
    "damage", [{"l3_off": []}, {"direction": [7]}, {"l3_off": [-1]}, {"l3_off": [10**6]}]
)
def test_inconsistent_headers_give_malformed_not_an_exception(damage: dict[str, list]) -> None:
    frame = udp4(C, S, 1, 2)
    batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, [(at(0), len(frame), frame, 1, 0, "")])
    headers = parse_packet_batch(batch, vectorise=False)
    broken = Headers(**{f: getattr(headers, f) for f in Headers.__dataclass_fields__})
    for name, value in damage.items():
        setattr(broken, name, value)
    state = BatchState({"flows": JsonStore()})
    verdicts = FlowMonitor(FlowMonitorConfig()).process(batch, broken, state)
    assert (verdicts.ports, verdicts.reasons) == (["drop"], ["malformed"])
    assert state.write_back() == 0


# -- timeouts and TCP end -------------------------------------------------------


def test_idle_timeout_starts_a_new_flow_from_the_next_sender() -> None:
    run = Run(idle_timeout=10)
    out, back = udp4(C, S, 5000, 53), udp4(S, C, 53, 5000)
    run([(at(0), out), (at(10), back)])  # exactly the timeout: still live
    assert run.records == []
    run([(at(20.5), back), (at(21), out)])
    record = one(run.records)
    assert (record["flowEndReason"], record["ts_ns"], counts(record)) == (
        "idle timeout", at(10), (1, 28, 1, 28),
    )  # fmt: skip
    new = one(run.flush(at(22)))
    assert (new["sourceIPv4Address"], new["flowStartNanoseconds"]) == (S, at(20.5))
    assert (new["flowEndReason"], counts(new)) == ("forced end", (1, 28, 1, 28))


def test_active_timeout_keeps_initiator_and_fins() -> None:
    run = Run(idle_timeout=5, active_timeout=10)
    script = [(at(s), tcp4(C, S, 6000, 22, "A")) for s in range(0, 10)]
    script += [(at(9.5), tcp4(C, S, 6000, 22, "FA"))]
    script += [(at(11), tcp4(S, C, 22, 6000, "PA")), (at(12), tcp4(S, C, 22, 6000, "FA"))]
    run(script, batch_size=3)
    first, second = run.records
    assert (first["flowEndReason"], first["ts_ns"], counts(first)[::2]) == (
        "active timeout", at(9.5), (11, 0),
    )  # fmt: skip
    # The continuation is still oriented from the client, though the server sent
    # its first packet, and the client's FIN before the split still counts.
    assert second["sourceIPv4Address"] == C and second["sourceTransportPort"] == 6000
    assert (second["flowEndReason"], second["flowStartNanoseconds"]) == (
        "end of flow detected", at(11),
    )  # fmt: skip
    assert counts(second)[::2] == (0, 2) and second["tcpControlBits"] == 0x19
    assert run.flows == {}


def test_rst_ends_flow_and_last_ack_starts_another() -> None:
    run = Run()
    run(
        [
            (at(0), tcp4(C, S, 7000, 443, "S")),
            (at(1), tcp4(S, C, 443, 7000, "RA")),
            (at(2), tcp4(C, S, 7001, 443, "FA")),
            (at(2.1), tcp4(S, C, 443, 7001, "FA")),
            (at(2.2), tcp4(C, S, 7001, 443, "A")),  # the last ACK: a flow of its own
        ]
    )
    assert [(r["flowEndReason"], counts(r)[::2]) for r in run.records] == [
        ("end of flow detected", (1, 1)),
        ("end of flow detected", (1, 1)),
    ]
    last_ack = one(run.flush(at(100)))
    assert (last_ack["flowEndReason"], last_ack["tcpControlBits"]) == ("idle timeout", 0x10)


def test_one_fin_does_not_end_a_flow() -> None:
    run = Run()
    run([(at(0), tcp4(C, S, 1, 2, "FA")), (at(1), tcp4(C, S, 1, 2, "FA"))])
    assert run.records == [] and len(run.flows) == 1


def test_packet_time_stepping_back() -> None:
    run = Run(idle_timeout=10)
    out = udp4(C, S, 5000, 53)
    run([(at(5), out), (at(1), out), (at(14), out)])  # 14 - 5 <= 10: last_seen stays 5
    assert run.records == []
    record = one(run.flush(at(14)))
    assert (record["flowStartNanoseconds"], record["flowEndNanoseconds"]) == (at(5), at(14))


# -- flush ----------------------------------------------------------------------


def test_flush_reasons_order_and_deletion() -> None:
    run = Run(idle_timeout=10)
    run(
        [
            (at(0), udp4(C, S, 3, 53)),
            (at(5), udp4(C, S, 2, 53)),
            (at(5), udp4(C, S, 1, 53)),
            (at(12), udp4(S, C, 53, 4)),
        ]
    )
    records = run.flush(at(15))
    assert [(r["sourceTransportPort"], r["flowEndReason"]) for r in records] == [
        (3, "idle timeout"),  # 15 - 0 > 10
        (1, "forced end"),  # 15 - 5 == 10; same end and start: ordered by flow key
        (2, "forced end"),
        (53, "forced end"),
    ]
    assert run.flows == {} and run.flush(at(15)) == []


# -- state writes and batch boundaries --------------------------------------------


def test_one_write_per_flow_per_batch() -> None:
    run = Run()
    run([(at(i * 0.01), udp4(C, S, 5000, 53)) for i in range(100)])
    run([(at(2 + i * 0.01), udp4(S, C, 53, 5000)) for i in range(100)])
    assert run.writes == [1, 1] and run.store.sets == 2
    [entry] = run.flows.values()
    assert entry == [at(0), at(2.99), 0, 100, 2800, 100, 2800, 0, 0]
    run([(at(3), tcp4(C, S, 1, 2, "R"))])  # born and ended within the batch
    run([(at(4), arp())])
    assert run.writes == [1, 1, 0, 0]
    run([(at(5), tcp4(S, C, 53, 5000, "R")), (at(5), udp4(S, C, 53, 5000))])
    assert run.writes[-1] == 1  # the UDP flow's update, once


def _random_traffic(seed: int, n: int = 900) -> Packets:
    """Few endpoints, ~50 ms apart with some long gaps and some steps back in time."""
    rnd = random.Random(seed)
    packets: Packets = []
    t = 0.0
    for i in range(n):
        t += rnd.expovariate(20) + (4 if rnd.random() < 0.01 else 0)
        ts = t - 0.3 if rnd.random() < 0.02 else t
        c, s = rnd.choice([C, "10.0.0.2"]), rnd.choice([S, "192.0.2.1"])
        sport, dport = rnd.choice([40000, 40001]), rnd.choice([80, 53])
        if rnd.random() < 0.5:
            c, s, sport, dport = s, c, dport, sport
        pick = rnd.randrange(14)
        flags = rnd.choice(["A", "A", "PA", "PA", "S", "SA", "FA", "FA", "R", "RA"])
        payload = bytes(rnd.randrange(50))
        frame: bytes
        if pick < 5:
            frame = tcp4(c, s, sport, dport, flags, payload, vlan=7 if pick == 0 else None)
        elif pick < 7:
            frame = udp4(c, s, sport, dport, payload) + bytes(rnd.choice([0, 6]))
        elif pick == 7:
            frame = icmp4_echo(c, s, ident=i % 2, reply=rnd.random() < 0.5)
        elif pick == 8:
            frame = icmp4_error(s, c) if i % 2 else ether(ip4(c, s, 47, payload))
        elif pick == 9:
            v6 = ["2001:db8::1", "2001:db8::2"]
            rnd.shuffle(v6)
            frame = tcp6(*v6, sport, dport, flags) if i % 2 else udp6(*v6, sport, dport, payload)
        elif pick == 10:
            frame = icmp6_echo("2001:db8::1", "fd00::1", ident=3, reply=rnd.random() < 0.5)
        elif pick == 11:
            frame = rnd.choice(fragments4(c, s, sport, dport, bytes(40), ip_id=i % 3, frag_size=16))
        elif pick == 12:
            frame = rnd.choice(
                fragments6("2001:db8::1", "2001:db8::2", sport, dport, bytes(64), frag_size=32)
            )
        else:
            frame = arp() if i % 2 else ether(ip4(c, s, 6, b"\x01\x02"))  # malformed
        packets.append((at(ts), frame))
    return packets


def _outputs(packets: Packets, batch_size: int, **config: Any) -> tuple:
    run = Run(**config)
    verdicts = run(packets, batch_size)
    state = dict(run.flows)
    return verdicts, run.records, state, run.flush(packets[-1][0] + 1)


def test_records_do_not_depend_on_batch_boundaries() -> None:
    packets = _random_traffic(1)
    results = [_outputs(packets, size, idle_timeout=1, active_timeout=3) for size in (1, 7, 512)]
    assert results[0] == results[1] == results[2]


def _check_against_model(packets: Packets, batch_size: int = 512, **config: Any) -> list:
    """Core == model: verdicts, records in order, flush records; totals == IP traffic."""
    verdicts, records, _, flushed = _outputs(packets, batch_size, **config)
    model = FlowModel(config.get("idle_timeout", 15), config.get("active_timeout", 300))
    model.feed(packets)
    assert verdicts == model.verdicts
    assert records == model.records
    by_json = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    assert by_json(flushed) == by_json(model.finish(packets[-1][0] + 1))
    ends = [(r["ts_ns"], r["flowStartNanoseconds"]) for r in flushed]
    assert ends == sorted(ends)
    everything = records + flushed
    assert sum(r["packetDeltaCount"] + r["reversePacketDeltaCount"] for r in everything) == (
        model.ip_packets
    )
    assert sum(r["octetDeltaCount"] + r["reverseOctetDeltaCount"] for r in everything) == (
        model.ip_octets
    )
    assert json.loads(json.dumps(everything)) == everything
    return everything


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_traffic_matches_model(seed: int) -> None:
    records = _check_against_model(_random_traffic(seed), idle_timeout=1, active_timeout=3)
    assert set(Counter(r["flowEndReason"] for r in records)) == set(REASONS)


def test_never_raises_and_counts_every_ip_packet() -> None:
    rnd = random.Random(7)
    good = [
        tcp4(C, S, 1, 2),
        tcp6(),
        icmp6_echo(),
        *fragments4(C, S, 1, 2, bytes(40), frag_size=16),
    ]
    packets = []
    for i in range(1500):
        frame = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(0, 4)):
            frame[rnd.randrange(len(frame))] = rnd.randrange(256)
        packets.append((at(i * 0.01), bytes(frame[: rnd.randint(0, len(frame))])))
    run = Run(idle_timeout=0.05)
    verdicts = run(packets)
    batch = PacketBatch.from_rows(LINKTYPE_ETHERNET, [(t, len(f), f, 1, 0, "") for t, f in packets])
    kinds = parse_packet_batch(batch).kind
    assert verdicts == [
        ("drop", "malformed") if k == KIND_MALFORMED else ("pass", "") for k in kinds
    ]
    records = run.records + run.flush(at(100))
    ip = kinds.count(KIND_IP)
    assert sum(r["packetDeltaCount"] + r["reversePacketDeltaCount"] for r in records) == ip


# -- real captures ------------------------------------------------------------------


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
@pytest.mark.parametrize(
    "timeouts",
    [
        {},
        {"idle_timeout": 0.5, "active_timeout": 2},
        {"idle_timeout": 0.01, "active_timeout": 0.05},
    ],
)
def test_real_capture_matches_model(capture: Path, timeouts: dict[str, float]) -> None:
    linktype, packets = read_pcap(capture)
    assert linktype == LINKTYPE_ETHERNET  # what the model reads
    records = _check_against_model(packets, **timeouts)
    assert records
    assert _outputs(packets, 1, **timeouts) == _outputs(packets, 512, **timeouts)


def test_real_captures_reach_every_end_reason() -> None:
    """With millisecond timeouts the real timings give idle, active and TCP ends."""
    if not CAPTURES:
        pytest.skip(reason=f"real captures not found at {traffic_dir()}")
    reasons: Counter[str] = Counter()
    for capture in CAPTURES:
        _, packets = read_pcap(capture)
        _, records, _, flushed = _outputs(packets, 512, idle_timeout=0.01, active_timeout=0.05)
        reasons.update(r["flowEndReason"] for r in records + flushed)
    assert set(reasons) == set(REASONS), reasons
