"""The cases of the ipsec chaos runs (tests/integration/test_ipsec_chaos.py,
bench/ipsec_chaos.py): a pipeline file, its keys and a capture, written to a directory.

The two-gateway case (write_case), whose encrypting worker is killed:

    encrypt (gateway A: ipsec outbound, SAs 0x2001 and 0x2002)
      -> decrypt (gateway B: ipsec inbound, the same SAs seen from the other end)
      -> egress: the inner packets again, which --local gives byte for byte

The replay case (write_replay_case), whose decrypting worker is killed: below.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path

from snf.functions.ipsec.esp import EspTransform
from snf.functions.ipsec.tunnel import outer_header
from snf.packet.pcapng_writer import PcapngWriter
from tests.packets import udp4

__all__ = ["BLOCK", "NAME", "REPLAY_NAME", "ReplayCase", "write_case", "write_replay_case"]

NAME = "ipsecchaos"
BLOCK = 16  # seq_block: tiny, so that a crash likely falls in a reservation's window
T0 = 1_767_225_600 * 10**9
ETHER = bytes(6) + bytes(range(1, 7)) + b"\x08\x00"
KEYS = {"low": bytes(range(1, 21)).hex(), "high": bytes(range(31, 51)).hex()}


def _sa(direction: str, spi: int, local: str, peer: str, key: str, mine: str, theirs: str) -> str:
    return (
        f"        - {{name: {key}, direction: {direction}, spi: {spi:#x}, local: {local}, "
        f"peer: {peer}, cipher: aes-gcm-128, key_file: {key}.hex,\n"
        f"           selectors: [{{local: '{mine}', remote: 10.2.0.0/16}}]}}\n"
        if direction == "out"
        else f"        - {{name: {key}, direction: in, spi: {spi:#x}, local: {local}, "
        f"peer: {peer}, cipher: aes-gcm-128, key_file: {key}.hex,\n"
        f"           selectors: [{{local: 10.2.0.0/16, remote: '{theirs}'}}]}}\n"
    )


def pipeline_text() -> str:
    a, b = "192.0.2.1", "198.51.100.2"
    low, high = "10.1.0.0/17", "10.1.128.0/17"
    text = f"name: {NAME}\npartitions: 2\nfunctions:\n"
    text += "  - name: encrypt\n    function: ipsec\n    config:\n      direction: outbound\n"
    text += f"      seq_block: {BLOCK}\n      sas:\n"
    text += _sa("out", 0x2001, a, b, "low", low, "")
    text += _sa("out", 0x2002, a, b, "high", high, "")
    text += "  - name: decrypt\n    function: ipsec\n    config:\n      direction: inbound\n"
    text += "      sas:\n"
    text += _sa("in", 0x2001, b, a, "low", "", low)
    text += _sa("in", 0x2002, b, a, "high", "", high)
    return text


def write_case(directory: Path, packets: int) -> tuple[Path, Path, int]:
    """pipeline.yaml, the two key files and capture.pcapng in `directory`."""
    for name, key in KEYS.items():
        (directory / f"{name}.hex").write_text(key + "\n")
    pipeline = directory / "pipeline.yaml"
    pipeline.write_text(pipeline_text())
    capture = directory / "capture.pcapng"
    with PcapngWriter(capture) as w:
        for i in range(packets):
            host = f"10.1.{(i % 7) * 40}.{1 + i % 5}"  # both SAs' halves of 10.1/16
            frame = udp4(host, f"10.2.0.{1 + i % 3}", 20000 + i % 11, 53, b"%08d" % i)
            w.write(1, T0 + i * 1_000_000, frame)
    return pipeline, capture, packets


# The one-gateway case of the decrypt chaos runs: peer A's ESP to gateway B, as on
# B's wire, with replays and late packets that straddle B's kills.
#
#     decrypt (gateway B: ipsec inbound, SA 0x3001 aes-gcm-128, SA 0x3002 aes-cbc-128)
#       -> egress: every original inner packet once, late ones included
#       -> drop: every replayed copy (`replay` inside the window, `outside_window` older)
REPLAY_NAME = "ipsecreplay"
REPLAY_SAS = (  # name, SPI, cipher, key material, the peer's half of 10.1/16
    ("gcm", 0x3001, "aes-gcm-128", bytes(range(61, 81)), "10.1.0.0/17"),
    ("cbc", 0x3002, "aes-cbc-128-hmac-sha256", bytes(range(91, 139)), "10.1.128.0/17"),
)
REPLAY_EVERY = 25  # a replayed copy after about one in this many packets
LATE_EVERY = 60  # one in this many originals is held back, then sent late
REPLAY_REACH = 2500  # SA packets back a replay reaches: past the 1024-packet window too


@dataclass(frozen=True)
class ReplayCase:
    pipeline: Path
    capture: Path
    frames: int  # records in the capture
    originals: int  # each must leave on egress once
    replays: int  # each must be dropped (`replay` or `outside_window`)
    late: int  # originals sent after higher numbers of their SA (must still pass)


def replay_pipeline_text() -> str:
    a, b = "192.0.2.1", "198.51.100.2"
    text = f"name: {REPLAY_NAME}\npartitions: 2\nfunctions:\n"
    text += "  - name: decrypt\n    function: ipsec\n    config:\n      direction: inbound\n"
    text += "      sas:\n"
    for name, spi, cipher, _, theirs in REPLAY_SAS:
        text += (
            f"        - {{name: {name}, direction: in, spi: {spi:#x}, local: {b}, peer: {a}, "
            f"cipher: {cipher}, key_file: {name}.hex,\n"
            f"           selectors: [{{local: 10.2.0.0/16, remote: '{theirs}'}}]}}\n"
        )
    return text


def write_replay_case(directory: Path, packets: int, seed: int = 7) -> ReplayCase:
    """pipeline.yaml, the key files and capture.pcapng of `packets` originals (plus
    replayed copies) in `directory`."""
    rng = random.Random(seed)
    for name, _, _, key, _ in REPLAY_SAS:
        (directory / f"{name}.hex").write_text(key.hex() + "\n")
    pipeline = directory / "pipeline.yaml"
    pipeline.write_text(replay_pipeline_text())
    sas = [EspTransform(cipher, key, spi) for _, spi, cipher, key, _ in REPLAY_SAS]
    a, b = socket.inet_aton("192.0.2.1"), socket.inet_aton("198.51.100.2")
    sent: list[list[bytes]] = [[], []]  # per SA, its ESP frames in sequence order
    held: list[tuple[int, bytes]] = []  # (due index, frame) of late originals
    wire: list[bytes] = []
    replays = late = 0
    for i in range(packets):
        sa = (i // 3) % 2
        inner = udp4(f"10.1.{sa * 128 + i % 7}.{1 + i % 5}", f"10.2.0.{1 + i % 3}",
                     20000 + i % 11, 53, b"%08d" % i)[14:]  # fmt: skip
        seq = len(sent[sa]) + 1
        payload = sas[sa].seal(seq, 4, inner)
        frame = ETHER + outer_header(4, a, b, len(payload), 0, seq) + payload
        sent[sa].append(frame)
        if rng.randrange(LATE_EVERY) == 0:
            held.append((i + rng.randint(2, 600), frame))
            late += 1
        else:
            wire.append(frame)
        wire += [f for due, f in held if due == i]
        held = [(due, f) for due, f in held if due != i]
        if rng.randrange(REPLAY_EVERY) == 0 and len(sent[sa]) > 1:
            back = rng.randint(1, min(REPLAY_REACH, len(sent[sa]) - 1))
            copy = sent[sa][-1 - back]
            if all(f is not copy for _, f in held):  # its original went out already
                wire.append(copy)
                replays += 1
    wire += [f for _, f in held]
    capture = directory / "capture.pcapng"
    with PcapngWriter(capture) as w:
        for n, frame in enumerate(wire):
            w.write(1, T0 + n * 1_000_000, frame)
    return ReplayCase(pipeline, capture, len(wire), packets, replays, late)
