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


def test_a_batch_counts_every_change_and_keeps_each_clients_latest_row() -> None:
    """Every merge, clear and client row is one change; a client changed twice keeps its last row."""
    batch = Batch()
    assert not batch and batch.changes == 0
    batch.merge([4, 4])
    batch.client(7, (10, None, 1.0))
    batch.client(7, (12, 11, 2.0))
    batch.put_clients({8: (1, 2, 3.0), 9: (-1, None, 4.0)})
    assert batch and batch.changes == 5
    assert batch.values == [4, 4]
    assert batch.clients == {7: (12, 11, 2.0), 8: (1, 2, 3.0), 9: (-1, None, 4.0)}


def test_a_clear_drops_the_adds_before_it_and_keeps_the_ones_after() -> None:
    """A batch is "maybe empty the list, then add these": client rows are not touched by a clear."""
    batch = Batch()
    batch.merge([1, 2])
    batch.client(3, (5, None, 0.0))
    batch.clear()
    batch.merge([9])
    assert (batch.cleared, batch.values, batch.changes) == (True, [9], 4)
    assert batch.clients == {3: (5, None, 0.0)}


def test_then_hands_the_later_batchs_waiters_over() -> None:
    """After `then`, the waiters to fire are the later batch's: the caller fires this one's itself."""
    first, later = Batch(), Batch()
    first.merge([1])
    mine = first.waiter()
    later.merge([2])
    theirs = later.waiter()
    assert first.waiters == [mine]
    first.then(later)
    assert first.waiters == [theirs]
    assert not mine.called and not theirs.called
