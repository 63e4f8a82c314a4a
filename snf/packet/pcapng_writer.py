"""PcapngWriter: results as pcapng files that Wireshark opens with exact timestamps.

One section, little-endian. An interface (IDB) is written the first time a
link type is used, with if_tsresol=9 so timestamps are whole nanoseconds and
snaplen 0 (no limit). Packets are Enhanced Packet Blocks built with `struct`:
dpkt's EPB would overwrite the original length with the captured length.
`write_batch` builds the blocks of many packets at once: numpy for the
fixed-size fields, one C-level join for the bytes.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import dpkt.pcapng as dpng
import numpy as np

from snf.errors import SnfError

__all__ = ["PcapngWriteError", "PcapngWriter"]

_EPB = 6
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, length, iface, ts high, ts low, caplen, origlen
_U32 = struct.Struct("<I")
_OPT_HEAD = struct.Struct("<HH")
_END_OF_OPTS = b"\0\0\0\0"
_ZEROS = (b"", b"\0", b"\0\0", b"\0\0\0")
_WRITE_PACKETS = 4096  # packets per join in write_batch: bounded memory, few writes
# pcapng holds u64 ns, but snf's packet time is int64 (and its reader refuses more):
# what snf writes, snf reads back.
_TS_LIMIT = 1 << 63


class PcapngWriteError(SnfError, ValueError):
    """A packet pcapng (or snf's reader of it) cannot hold; nothing of it was written."""


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
        self.name = str(target) if self._owned else str(getattr(target, "name", "<stream>"))
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

    def _bad_time(self, index: int, ts_ns: int) -> PcapngWriteError:
        number = self.packets + index + 1
        what = f"timestamp {ts_ns} ns is outside 0..2^63-1 ns (1970 to 2262)"
        return PcapngWriteError(f"{self.name}: cannot write packet {number}: {what}")

    def write(
        self,
        linktype: int,
        ts_ns: int,
        data: bytes,
        orig_len: int | None = None,
        comment: str | None = None,
    ) -> None:
        """Append one packet; `comment` becomes its opt_comment (Wireshark: pkt_comment)."""
        if not 0 <= ts_ns < _TS_LIMIT:
            raise self._bad_time(0, ts_ns)
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

    def write_batch(
        self,
        linktypes: np.ndarray,
        ts_ns: np.ndarray,
        orig_len: np.ndarray,
        datas: Sequence[Any],
        comments: Sequence[bytes] | None = None,
    ) -> None:
        """Append many packets; the same bytes as `write` called for each in turn."""
        kinds = np.asarray(linktypes, dtype=np.int64)
        at = 0
        while at < len(datas):
            # An interface block goes where its link type is first used, as `write` does.
            fresh = ~np.isin(kinds[at:], list(self._interfaces))
            end = at + int(np.argmax(fresh)) if fresh.any() else len(datas)
            end = min(end, at + _WRITE_PACKETS)
            if end == at:
                self._interface(int(kinds[at]))
                continue
            part = None if comments is None else comments[at:end]
            self._write_blocks(kinds[at:end], ts_ns[at:end], orig_len[at:end], datas[at:end], part)
            at = end

    def _write_blocks(
        self,
        linktypes: np.ndarray,
        ts_ns: np.ndarray,
        orig_len: np.ndarray,
        datas: Sequence[Any],
        comments: Sequence[bytes] | None,
    ) -> None:
        n = len(datas)
        if n == 0:
            return
        ts = np.asarray(ts_ns, dtype=np.int64)
        orig = np.asarray(orig_len, dtype=np.int64)
        caplen = np.fromiter(map(len, datas), dtype=np.int64, count=n)
        if ts.min() < 0:  # int64: never past the top
            first = int(np.argmax(ts < 0))
            raise self._bad_time(first, int(ts[first]))
        if caplen.max() >= 1 << 32 or orig.min() < 0 or orig.max() >= 1 << 32:
            raise ValueError("packet lengths do not fit 32 bits")
        kinds = np.asarray(linktypes, dtype=np.int64)
        ifaces = np.zeros(n, dtype=np.int64)
        for linktype in np.unique(kinds).tolist():
            ifaces[kinds == linktype] = self._interface(linktype)
        pad = -caplen & 3
        if comments is None:
            texts: list[bytes] = []
            opt_len = np.zeros(n, dtype=np.int64)
        else:
            text_len = np.fromiter(map(len, comments), dtype=np.int64, count=n)
            if text_len.max() > 0xFFFF:
                raise ValueError("a comment does not fit an option")
            text_pad = -text_len & 3
            # option head + text + its padding + end of options
            opt_len = 4 + text_len + text_pad + 4
            texts = list(
                map(bytes.ljust, comments, (text_len + text_pad).tolist(), itertools.repeat(b"\0"))
            )
        blen = 32 + caplen + pad + opt_len
        head = np.empty((n, 7), dtype="<u4")
        head[:, 0] = _EPB
        head[:, 1] = blen
        head[:, 2] = ifaces
        head[:, 3] = ts >> 32
        head[:, 4] = ts & 0xFFFFFFFF
        head[:, 5] = caplen
        head[:, 6] = orig
        heads = _rows(head.tobytes(), 28, n)
        # After the data: its padding and the option's head (or nothing).
        if comments is None:
            middles = list(map(_ZEROS.__getitem__, pad.tolist()))
            tails = _rows(blen.astype("<u4").tobytes(), 4, n)
            items = _interleave(heads, datas, middles, tails)
        else:
            opt_head = np.empty((n, 2), dtype="<u2")
            opt_head[:, 0] = 1  # opt_comment
            opt_head[:, 1] = text_len
            middles = list(
                map(
                    bytes.__add__,
                    map(_ZEROS.__getitem__, pad.tolist()),
                    _rows(opt_head.tobytes(), 4, n),
                )
            )
            tail = np.zeros((n, 2), dtype="<u4")  # end of options, trailing block length
            tail[:, 1] = blen
            items = _interleave(heads, datas, middles, texts, _rows(tail.tobytes(), 8, n))
        self._file.write(b"".join(items))
        self.packets += n

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


def _rows(data: bytes, width: int, n: int) -> list[bytes]:
    """The n consecutive `width`-byte rows of data (numpy splits them in C)."""
    return np.frombuffer(data, dtype=f"V{width}", count=n).tolist()


def _interleave(*columns: Sequence[Any]) -> list[Any]:
    """[a0, b0, c0, a1, b1, c1, ...] by slice assignment (no Python loop per item)."""
    k = len(columns)
    items: list[Any] = [None] * (k * len(columns[0]))
    for i, column in enumerate(columns):
        items[i::k] = column
    return items
