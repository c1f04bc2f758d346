"""Array replies (`numd.counter.replies`): `format_values` cuts the list at the cap, reading only
what fits; `ListReply`'s kept reply always equals one formatted afresh, without formatting it
afresh."""

from __future__ import annotations

import random

import pytest
from sortedcontainers import SortedList
from twisted.internet.task import Clock

import numd.counter.replies
from numd.counter.replies import ListReply, format_values
from numd.service import NumberService


@pytest.mark.parametrize("cap", [64, 100, 1000, 64 * 1024])
@pytest.mark.parametrize("spread", [10, 10**6, 2**63 - 1])
def test_the_kept_reply_follows_every_merge(cap: int, spread: int) -> None:
    """Merges below, at and above the cut, sizes gaining digits, clears, and adds with no reply between."""
    rng = random.Random(cap + spread % 1000)
    service = NumberService(Clock())
    kept = ListReply(service, cap)
    for step in range(600):
        count = rng.choice([1, 1, 2, 15, 200])
        service.merge([rng.randint(-spread, spread) for _ in range(count)])
        if step % 250 == 249:
            service.clear()
        if rng.random() < 0.7:  # some merges (HTTP adds) get no reply
            assert kept.reply() == format_values(service.values, cap)
    assert kept.reply() == format_values(service.values, cap)


def test_a_merge_does_not_format_the_list_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first reply, merges update the kept texts: the list is not read and formatted again."""
    service = NumberService(Clock())
    service.merge(list(range(0, 200_000, 7)))
    kept = ListReply(service, 64 * 1024)
    first = kept.reply()
    assert first.endswith(b",...]/28572")
    formatted: list[int] = []
    original = numd.counter.replies.format_values

    def counting(values: object, cap: int) -> bytes:
        formatted.append(cap)
        return original(values, cap)  # type: ignore[arg-type]

    monkeypatch.setattr(numd.counter.replies, "format_values", counting)
    for value in (3, -5, 100_000, 2**40, 8):
        service.merge([value])
        assert kept.reply() == original(service.values, 64 * 1024)
    assert formatted == []
    service.clear()
    service.merge([2, 1])
    assert kept.reply() == b"[1,2]"


def test_format_values_small_and_exact_fit() -> None:
    """A list that fits is sent whole; one byte less cuts it."""
    values = SortedList([1, 22, 333])
    assert format_values(values, 64) == b"[1,22,333]"
    assert format_values(SortedList(), 64) == b"[]"
    long = SortedList(range(100))
    whole = format_values(long, 10_000)
    assert format_values(long, len(whole)) == whole
    assert format_values(long, len(whole) - 1).endswith(b",...]/100")


@pytest.mark.parametrize(
    "values",
    [
        [v % 101 for v in range(200_000)],
        list(range(-100_000, 100_000)),
        [(-1) ** v * v * 7_919_000_000_013 for v in range(50_000)],
        [5] * 100_000,
    ],
    ids=["repeated-small", "negative-to-positive", "wide-mixed-signs", "one-value"],
)
def test_format_values_is_the_exact_prefix(values: list[int]) -> None:
    """For any kind of list, the cut reply is exactly the smallest values, nearly filling the cap."""
    sorted_values = SortedList(values)
    reply = format_values(sorted_values, 65536)
    head, size = reply.split(b"/")
    shown = [int(v) for v in head[1:-5].split(b",")]
    assert shown == list(sorted_values[: len(shown)])
    assert int(size) == len(values)
    assert 65536 - 25 <= len(reply) <= 65536


def test_format_values_cost_is_bounded() -> None:
    """A million values still give a reply within the default cap, starting at the smallest."""
    values = SortedList(range(1_000_000))
    reply = format_values(values, 64 * 1024)
    assert len(reply) <= 64 * 1024
    assert reply.startswith(b"[0,1,2,")
    assert reply.endswith(b",...]/1000000")
