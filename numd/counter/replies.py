"""Array replies: the shared sorted list as one token, within a byte cap, cheaply.

The whole list is ``[1,2,3]``; a list too long for the cap is cut after the last
value that fits and marked with its total size: ``[1,2,3,...]/1000000``. Only the
values that can fit are ever read and formatted, and `ListReply` keeps the shown
values' texts between requests, updated as values are merged in: a reply is then
one join of strings, not the formatting of thousands of integers.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from numd.service import NumberService, SortedValues, StateObserver


class ListReply(StateObserver):
    """The array reply for a service's list, kept up to date as values are merged.

    It holds the values the reply shows (a prefix of the sorted list) and their
    texts. A merged value below the first hidden one is inserted among them, and
    the largest shown values are dropped while the reply would pass the cap
    (the prefix that fits only shrinks as values are added). A clear starts over.
    """

    def __init__(self, service: NumberService, cap: int) -> None:
        self._service = service
        self._cap = cap
        self._shown: list[int] | None = None
        """The values the reply shows, ascending; None when they must be read again."""
        self._texts: list[str] = []
        """Their decimal texts, in the same order."""
        self._chars = 0
        """``len(",".join(texts)) + 1``: every text with its comma."""
        self._next_hidden: int | None = None
        """The first value the reply does not show; None when it shows them all."""
        service.add_observer(self)

    def merged(self, values: list[int]) -> None:
        """Values merged: those that fall among the shown ones are shown, within the cap."""
        if self._shown is not None:
            self._insert(values)
            self._trim()

    def cleared(self) -> None:
        """The list was emptied: the reply is read again next time."""
        self._shown = None

    def _insert(self, added: list[int]) -> None:
        shown, texts, hidden = self._shown, self._texts, self._next_hidden
        assert shown is not None
        for value in sorted(added):
            # SortedList puts a value after its equals: one equal to the first
            # hidden value lands after it, out of the reply.
            if hidden is not None and value >= hidden:
                break
            index = bisect_right(shown, value)
            text = str(value)
            shown.insert(index, value)
            texts.insert(index, text)
            self._chars += len(text) + 1

    def _trim(self) -> None:
        """Drop the largest shown values until the reply fits the cap."""
        if self._next_hidden is None and self._chars - 1 + 2 <= self._cap:
            return  # the whole list fits: ``[...]``
        budget = self._cap - 1 - len(f",...]/{self._service.list_size}")
        shown, texts = self._shown, self._texts
        assert shown is not None
        while self._chars - 1 > budget:
            self._next_hidden = shown.pop()
            self._chars -= len(texts.pop()) + 1

    def reply(self) -> bytes:
        """The reply token for the list as it is now."""
        if self._shown is None or not self._texts:
            return self._read()
        body = ",".join(self._texts)
        if self._next_hidden is None:
            return ("[" + body + "]").encode("ascii")
        return ("[" + body + f",...]/{self._service.list_size}").encode("ascii")

    def _read(self) -> bytes:
        """Format the reply from the list itself, and keep what it shows."""
        service = self._service
        reply = format_values(SortedValues(service), self._cap)
        whole = reply.endswith(b"]")
        body = reply[1 : -1 if whole else reply.rindex(b",...]/")].decode("ascii")
        self._texts = body.split(",") if body else []
        self._shown = service.values_slice(0, len(self._texts))
        self._chars = len(body) + 1 if body else 0
        self._next_hidden = None if whole else service.value_at(len(self._texts))
        return reply


def format_values(values: Sequence[int], cap: int) -> bytes:
    """The sorted list as one token of at most `cap` bytes.

    The whole list is ``[1,2,3]``. A list too long for `cap` is cut after the
    last value that fits and marked with its total size: ``[1,2,3,...]/1000000``.
    Only the values that can fit are read and formatted, so the cost is bounded
    by `cap` whatever the size of the list.
    """
    size = len(values)
    if size == 0:
        return b"[]"
    whole_budget = cap - 2
    parts: list[str] = []
    length = -1  # the first part has no comma before it
    position = 0
    while position < size and length < whole_budget:
        # Read no more values than can fit: estimate the count from the widest
        # of the window's two ends (sorted values widen away from zero), so
        # the estimate never overshoots and the loop picks up the rest.
        room = whole_budget - length
        last = min(position + room // 2, size - 1)
        width = max(len(str(values[position])), len(str(values[last]))) + 1
        chunk = values[position : position + room // width + 1]
        text = _join_sorted(chunk)
        parts.append(text)
        length += 1 + len(text)
        position += len(chunk)
    body = ",".join(parts)
    if position >= size and len(body) <= whole_budget:
        return ("[" + body + "]").encode("ascii")
    suffix = f",...]/{size}"
    budget = cap - 1 - len(suffix)
    if len(body) > budget:
        body = body[: body.rfind(",", 0, budget + 1)]
    return ("[" + body + suffix).encode("ascii")


_MAX_RUNS = 256


def _join_sorted(chunk: Sequence[int]) -> str:
    """``",".join(map(str, chunk))`` for a sorted chunk, faster when values repeat.

    A list of 10^6 values drawn from 0-100 holds long runs of equal values: those
    are written by repeating one string instead of formatting every value.
    """
    runs: list[tuple[int, int]] = []
    start, end = 0, len(chunk)
    while len(runs) < _MAX_RUNS:
        value = chunk[start]
        stop = bisect_right(chunk, value, start, end)
        runs.append((value, stop - start))
        start = stop
        if start >= end:
            return "".join((str(value) + ",") * count for value, count in runs)[:-1]
    return ",".join(map(str, chunk))
