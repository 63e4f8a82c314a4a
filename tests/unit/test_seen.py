"""SeenIds: exact bitmaps for a run, a bounded window for a sink that never stops."""

from __future__ import annotations

import numpy as np

from snf.egress.seen import SeenIds

A, B = 0xA, 0xB


def ids(source: int, *seqs: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(len(seqs), source, dtype=np.uint64), np.asarray(seqs, dtype=np.uint64)


def test_exact_keeps_every_id_first_copy_new() -> None:
    seen = SeenIds()
    assert seen.fresh(*ids(A, 5, 6, 5, 1_000_000)).tolist() == [True, True, False, True]
    assert seen.fresh(*ids(A, 3, 6, 7)).tolist() == [True, False, True]  # below the first
    assert seen.fresh(*ids(B, 6)).tolist() == [True]  # another source
    mixed = np.asarray([A, B, A], dtype=np.uint64), np.asarray([7, 7, 8], dtype=np.uint64)
    assert seen.fresh(*mixed).tolist() == [False, True, True]
    assert seen.nbytes < 200_000  # one bit per seq


def test_window_forgets_old_ids_and_counts_them() -> None:
    seen = SeenIds(window=64)
    assert seen.fresh(*ids(A, *range(10))).all()
    assert not seen.fresh(*ids(A, 3, 9)).any()  # within the window: duplicates
    assert seen.fresh(*ids(A, 100)).all()  # the window moves up to 100
    assert seen.evicted == 10
    assert seen.fresh(*ids(A, 3)).all() and seen.unchecked == 1  # too old to tell
    assert not seen.fresh(*ids(A, 100)).any()
    assert seen.nbytes == 8  # 64 bits, whatever the stream


def test_window_keeps_at_most_max_sources() -> None:
    seen = SeenIds(window=64, max_sources=2)
    for source in (A, B, 0xC):
        seen.fresh(*ids(source, 1, 2))
    assert seen.evicted == 2 and seen.nbytes == 16
    assert seen.fresh(*ids(A, 1)).all()  # A was forgotten
