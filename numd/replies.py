"""Array replies: the shared sorted list as one token, within a byte cap, cheaply.

The whole list is ``[1,2,3]``; a list too long for the cap is cut after the last
value that fits and marked with its total size: ``[1,2,3,...]/1000000``. Only the
values that can fit are ever read and formatted, and `ListReply` keeps the
formatted head between requests: a merge whose values all sort after the first
value left out changes only the total size.
"""

from __future__ import annotations

from bisect import bisect_right

from sortedcontainers import SortedList

from numd.service import NumberService


class ListReply:
    """The array reply for a service's list, rebuilt only when a change reaches what it shows."""

    def __init__(self, service: NumberService, cap: int) -> None:
        self._values = service.values
        self._cap = cap
        self._head: str | None = None
        """The shown values of a cut reply, ``[1,2,3``; None when it must be rebuilt."""
        self._next_hidden = 0
        """The first value the cut reply does not show."""
        service.add_observer(self._changed)

    def _changed(self, kind: str, payload: object) -> None:
        if kind == "merge" and self._head is not None:
            # SortedList inserts a value after its equals: values not below the
            # first hidden one land after it, so the head and the value that did
            # not fit after it stay the same; only the total grows.
            if not payload or min(payload) >= self._next_hidden:  # type: ignore[call-overload]
                return
        if kind in ("merge", "clear"):
            self._head = None

    def reply(self) -> bytes:
        """The reply token for the list as it is now."""
        values = self._values
        if self._head is not None:
            suffix = f",...]/{len(values)}"
            if len(self._head) + len(suffix) <= self._cap:
                return (self._head + suffix).encode("ascii")
        reply = format_values(values, self._cap)
        if reply.endswith(b"]"):
            self._head = None  # the whole list: any merge changes it
        else:
            head = reply[: reply.rindex(b",...]/")].decode("ascii")
            self._head = head
            self._next_hidden = values[head.count(",") + 1]
        return reply


def format_values(values: SortedList, cap: int) -> bytes:
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


def _join_sorted(chunk: list[int]) -> str:
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
