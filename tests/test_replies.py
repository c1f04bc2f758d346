"""ListReply: the kept array reply always equals one formatted afresh, without formatting it afresh."""

from __future__ import annotations

import random

import pytest
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
