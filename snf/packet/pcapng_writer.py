"""PcapngWriter: results as pcapng files that Wireshark opens with exact timestamps.

One section, little-endian. An interface (IDB) is written the first time a
link type is used, with if_tsresol=9 so timestamps are whole nanoseconds and
snaplen 0 (no limit). Packets are Enhanced Packet Blocks built with `struct`:
dpkt's EPB would overwrite the original length with the captured length.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import dpkt.pcapng as dpng

__all__ = ["PcapngWriter"]

_EPB = 6
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, length, iface, ts high, ts low, caplen, origlen
_U32 = struct.Struct("<I")
_OPT_HEAD = struct.Struct("<HH")
_END_OF_OPTS = b"\0\0\0\0"


def _option(code: int, value: bytes) -> dpng.PcapngOptionLE:
    return dpng.PcapngOptionLE(code=code, data=value)


class PcapngWriter:
    """Write packets of any link types to one pcapng file.

    `target` is a path (opened, and closed by `close()`) or a binary file
    object (flushed, and left open). Use as a context manager.
    """

    def __init__(self, target: str | Path | BinaryIO, userappl: str = "snf") -> None:
        if isinstance(target, str | os.PathLike):
            self._file: BinaryIO = open(target, "wb")  # noqa: SIM115 - closed by close()
            self._owned = True
        else:
            self._file = target
            self._owned = False
        self._interfaces: dict[int, int] = {}  # link type -> interface id
        self.packets = 0
        end = _option(dpng.PCAPNG_OPT_ENDOFOPT, b"")
        shb = dpng.SectionHeaderBlockLE(
            opts=[_option(dpng.PCAPNG_OPT_SHB_USERAPPL, userappl.encode()), end]
        )
        self._file.write(bytes(shb))

    def _interface(self, linktype: int) -> int:
        iface = self._interfaces.get(linktype)
        if iface is None:
            if not 0 <= linktype <= 0xFFFF:
                raise ValueError(f"link type {linktype} does not fit pcapng's 16 bits")
            idb = dpng.InterfaceDescriptionBlockLE(
                linktype=linktype,
                snaplen=0,
                opts=[
                    _option(dpng.PCAPNG_OPT_IF_TSRESOL, b"\x09"),  # 10**-9 s
                    _option(dpng.PCAPNG_OPT_ENDOFOPT, b""),
                ],
            )
            self._file.write(bytes(idb))
            iface = self._interfaces[linktype] = len(self._interfaces)
        return iface

    def write(
        self,
        linktype: int,
        ts_ns: int,
        data: bytes,
        orig_len: int | None = None,
        comment: str | None = None,
    ) -> None:
        """Append one packet; `comment` becomes its opt_comment (Wireshark: pkt_comment)."""
        if not 0 <= ts_ns < 1 << 64:
            raise ValueError(f"timestamp {ts_ns} ns is outside pcapng's unsigned 64 bits")
        caplen = len(data)
        orig = caplen if orig_len is None else orig_len
        if caplen >= 1 << 32 or not 0 <= orig < 1 << 32:
            raise ValueError(f"packet lengths {caplen}/{orig} do not fit 32 bits")
        iface = self._interface(linktype)
        pad = b"\0" * (-caplen & 3)
        opts = b""
        if comment is not None:
            text = comment.encode()
            if len(text) > 0xFFFF:
                raise ValueError(f"comment of {len(text)} bytes does not fit an option")
            opts = _OPT_HEAD.pack(1, len(text)) + text + b"\0" * (-len(text) & 3) + _END_OF_OPTS
        blen = 32 + caplen + len(pad) + len(opts)
        head = _EPB_HEAD.pack(_EPB, blen, iface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, caplen, orig)
        self._file.write(b"".join((head, data, pad, opts, _U32.pack(blen))))
        self.packets += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        if self._owned:
            self._file.close()

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
