"""SeenIds: which packet ids a reader has had, one bit per id.

A packet id is (source id, seq), and a source's seqs are its packets'
positions in the stream (snf.ingress.replay): dense, from 0 or a resume
point. So a source's ids fit a bitmap, 1 bit per packet, checked and set
with numpy a batch at a time.

- Exact (`window=None`, the one-shot collector): the bitmap covers every seq
  seen, 1.25 MB per 10M packets of a source.
- Windowed (`window=W`, the following sink): a ring of W bits per source, the
  W seqs below the highest seen. An id that old (`unchecked`) counts as new;
  bits the window moves past are forgotten (`evicted`, ids counted); at most
  `max_sources` sources are kept, the least recently seen go first. Memory
  is at most max_sources * W / 8 bytes, whatever the length of the stream.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

__all__ = ["SeenIds"]

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)  # numpy < 2 too


class SeenIds:
    def __init__(self, window: int | None = None, max_sources: int = 64) -> None:
        if window is not None and (window <= 0 or window % 8):
            raise ValueError(f"window {window} is not a positive multiple of 8")
        self.window = window
        self.max_sources = max_sources
        self.evicted = 0  # ids forgotten by a windowed set
        self.unchecked = 0  # ids older than the window, let through unchecked
        self._bits: OrderedDict[int, _Bitmap | _Ring] = OrderedDict()

    def fresh(self, sources: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        """Record the ids (sources[i], seqs[i]); True where new (the first copy
        within the call, too)."""
        out = np.zeros(len(seqs), dtype=bool)
        if not len(seqs):
            return out
        first = int(sources[0])
        if (sources == first).all():  # the common case: one source
            out[:] = self._of(first).fresh(seqs.astype(np.int64))
            return out
        for sid in np.unique(sources).tolist():
            at = sources == sid
            out[at] = self._of(int(sid)).fresh(seqs[at].astype(np.int64))
        return out

    def _of(self, sid: int) -> _Bitmap | _Ring:
        bits = self._bits.get(sid)
        if bits is None:
            bits = self._bits[sid] = _Bitmap(self) if self.window is None else _Ring(self)
            while len(self._bits) > self.max_sources and self.window is not None:
                _, gone = self._bits.popitem(last=False)
                self.evicted += gone.count()
        else:
            self._bits.move_to_end(sid)
        return bits

    @property
    def nbytes(self) -> int:
        return sum(b.bits.nbytes for b in self._bits.values())


def _firsts(seqs: np.ndarray) -> np.ndarray:
    """Indices of the first copy of each seq, in order."""
    if len(seqs) < 2 or (np.diff(seqs) > 0).all():
        return np.arange(len(seqs))
    return np.sort(np.unique(seqs, return_index=True)[1])


def _test_and_set(bits: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """For distinct bit positions: True where unset before; sets them."""
    byte, mask = pos >> 3, (1 << (pos & 7)).astype(np.uint8)
    new = (bits[byte] & mask) == 0
    np.bitwise_or.at(bits, byte[new], mask[new])
    return new


class _Bitmap:
    """Every seq from `base` on, growing as needed."""

    def __init__(self, owner: SeenIds) -> None:
        self.base = -1
        self.bits = np.zeros(0, dtype=np.uint8)

    def fresh(self, seqs: np.ndarray) -> np.ndarray:
        lo, hi = int(seqs.min()), int(seqs.max())
        if self.base < 0:
            self.base = lo & ~7
        if lo < self.base:  # earlier than anything so far: grow downwards
            base = lo & ~7
            self.bits = np.concatenate([np.zeros((self.base - base) >> 3, np.uint8), self.bits])
            self.base = base
        need = ((hi - self.base) >> 3) + 1
        if need > len(self.bits):
            grown = np.zeros(max(need, 2 * len(self.bits), 1024), dtype=np.uint8)
            grown[: len(self.bits)] = self.bits
            self.bits = grown
        out = np.zeros(len(seqs), dtype=bool)
        first = _firsts(seqs)
        out[first] = _test_and_set(self.bits, seqs[first] - self.base)
        return out

    def count(self) -> int:
        return int(_POPCOUNT[self.bits].sum())


class _Ring:
    """The `window` seqs below `top` (one past the highest seen, in bytes of 8 seqs),
    seq s at bit s mod window."""

    def __init__(self, owner: SeenIds) -> None:
        assert owner.window is not None
        self.owner = owner
        self.bits = np.zeros(owner.window >> 3, dtype=np.uint8)
        self.top = -1  # byte number (seq >> 3) one past the highest seen

    def fresh(self, seqs: np.ndarray) -> np.ndarray:
        size = len(self.bits)
        top = (int(seqs.max()) >> 3) + 1
        if self.top < 0:
            self.top = top
        elif top > self.top:  # the window moves up: forget what falls out of it
            gone = np.arange(self.top, min(top, self.top + size)) % size
            self.owner.evicted += int(_POPCOUNT[self.bits[gone]].sum())
            self.bits[gone] = 0
            self.top = top
        out = np.ones(len(seqs), dtype=bool)  # too old to tell: let through
        inside = (seqs >> 3) >= self.top - size
        self.owner.unchecked += int(len(seqs) - inside.sum())
        at = np.flatnonzero(inside)
        first = at[_firsts(seqs[at])]
        out[at] = False
        out[first] = _test_and_set(self.bits, seqs[first] % (size << 3))
        return out

    def count(self) -> int:
        return int(_POPCOUNT[self.bits].sum())
