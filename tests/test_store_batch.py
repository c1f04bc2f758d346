"""Batches: the changes one commit writes, folded in order, clears included."""

from __future__ import annotations

from numd.store.batch import Batch


def test_batch_then_keeps_order() -> None:
    """Appending a later batch applies its clear after this batch's adds."""
    first, later = Batch(), Batch()
    first.merge([1, 1])
    later.merge([2])
    first.then(later)
    assert (first.cleared, first.values, first.changes) == (False, [1, 1, 2], 2)
    cleared = Batch()
    cleared.clear()
    cleared.merge([3])
    first.then(cleared)
    assert (first.cleared, first.values) == (True, [3])
