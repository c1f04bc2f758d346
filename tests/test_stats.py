"""The listeners' message counters (`numd.stats`): one helper counts what came in and went out."""

from __future__ import annotations

from numd.stats import Stats


def test_count_adds_received_and_sent_messages_of_a_kind() -> None:
    """A message counts as received by default; an answered request as both, in one call."""
    stats = Stats()
    stats.count("report")
    stats.count("report", 5)
    stats.count("even", 3, 3)
    stats.count("start", 0, 1)
    assert stats.received == {"report": 6, "even": 3}
    assert stats.sent == {"even": 3, "start": 1}


def test_a_zero_count_leaves_no_kind_behind() -> None:
    """Counting nothing in one direction adds no key there: metrics list only kinds that happened."""
    stats = Stats()
    stats.count("array", 0, 1)
    stats.count("odd", 0, 0)
    assert list(stats.received) == []
    assert list(stats.sent) == ["array"]
