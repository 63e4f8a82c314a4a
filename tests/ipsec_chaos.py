"""The two-gateway case of the ipsec chaos runs (tests/integration/test_ipsec_chaos.py,
bench/ipsec_chaos.py): a pipeline file, its keys and a capture, written to a directory.

    encrypt (gateway A: ipsec outbound, SAs 0x2001 and 0x2002)
      -> decrypt (gateway B: ipsec inbound, the same SAs seen from the other end)
      -> egress: the inner packets again, which --local gives byte for byte
"""

from __future__ import annotations

from pathlib import Path

from snf.packet.pcapng_writer import PcapngWriter
from tests.packets import udp4

__all__ = ["BLOCK", "NAME", "write_case"]

NAME = "ipsecchaos"
BLOCK = 16  # seq_block: tiny, so that a crash likely falls in a reservation's window
T0 = 1_767_225_600 * 10**9
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
