"""Sorted-list members that sort bytewise in value order, so Redis keeps 64-bit values exactly.

A sorted-set score is a double, exact only up to 2^53, and Lua (inside Redis scripts)
turns numbers into doubles too. So the sorted list is one sorted set whose scores are
all 0: Redis then orders its members bytewise, and each member is

- the value offset by 2^63, as 8 big-endian bytes (unsigned order equals signed order
  of the values), then
- an 8-byte suffix unique to that member (a 4-byte instance tag and a 4-byte counter),
  so equal values are distinct members and duplicates are kept.

Members are read back by rank (``ZRANGE key start stop``) and by value
(``ZRANGE key min max BYLEX`` with the bounds `lex_bounds` builds). Values only ever
travel as these bytes: never as scores, never as Lua numbers.

Tags are drawn at random, so two instances (or two runs of one) can draw the same tag;
the merge script refuses a batch with a member already in the set (`member-collision`,
nothing applied), and the caller draws a new tag with `MemberEncoder.retag` and retries.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable

from numd.service import INT64_MAX, INT64_MIN

OFFSET = 2**63
"""Added to a value so that the signed 64-bit range maps onto 0 .. 2^64-1 in order."""
VALUE_BYTES = 8
TAG_BYTES = 4
SUFFIX_BYTES = 8
MEMBER_BYTES = VALUE_BYTES + SUFFIX_BYTES
"""Every member is exactly this long."""
_COUNTER = struct.Struct(">I")
_COUNTER_LIMIT = 2 ** (8 * _COUNTER.size)
_TAG_LIMIT = 2 ** (8 * TAG_BYTES)

MIN_BOUND = b"-"
"""The BYLEX bound below every member."""
MAX_BOUND = b"+"
"""The BYLEX bound above every member."""


def value_prefix(value: int) -> bytes:
    """The 8 bytes that start every member holding `value` (a signed 64-bit integer)."""
    if isinstance(value, bool) or not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{value!r} is not a 64-bit integer")
    return (value + OFFSET).to_bytes(VALUE_BYTES, "big")


def decode_member(member: bytes) -> int:
    """The value a member holds."""
    if len(member) != MEMBER_BYTES:
        raise ValueError(f"a member is {MEMBER_BYTES} bytes, not {len(member)}: {member!r}")
    return int.from_bytes(member[:VALUE_BYTES], "big") - OFFSET


def decode_members(members: Iterable[bytes]) -> list[int]:
    """The values of several members, in their order."""
    return [decode_member(member) for member in members]


def split_members(blob: bytes) -> list[bytes]:
    """The members of a concatenation of members (as a merge's change-stream entry holds them)."""
    if len(blob) % MEMBER_BYTES:
        raise ValueError(f"{len(blob)} bytes are not a whole number of {MEMBER_BYTES}-byte members")
    return [blob[i : i + MEMBER_BYTES] for i in range(0, len(blob), MEMBER_BYTES)]


def lex_bounds(low: int | None = None, high: int | None = None) -> tuple[bytes, bytes]:
    """The ``ZRANGE ... BYLEX`` (or ``ZLEXCOUNT``) bounds of the values within `low`-`high`.

    Both ends are inclusive; None leaves that end open. A `low` above `high`
    gives bounds that select nothing.
    """
    minimum = MIN_BOUND if low is None else b"[" + value_prefix(low)
    if high is None or high == INT64_MAX:
        maximum = MAX_BOUND
    else:
        # Every member of `high` sorts below the first 8 bytes of `high + 1`.
        maximum = b"(" + value_prefix(high + 1)
    return minimum, maximum


def below_bound(value: int) -> bytes:
    """The BYLEX upper bound of the values smaller than `value` (with `MIN_BOUND`: ``count_below``)."""
    return b"(" + value_prefix(value)


class MemberEncoder:
    """Encodes values into members, each with a suffix of its own.

    One per instance. The suffix is the encoder's 4-byte tag and a 4-byte counter, so
    the members of one tag never repeat; when the counter wraps, or when `retag` is
    called after a collision with another tag's members, the encoder draws a new tag
    from `rng`.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.SystemRandom()
        self._tag = b""
        self._counter = 0
        self.retag()

    @property
    def tag(self) -> bytes:
        """The 4 bytes every member encoded since the last retag carries after its value."""
        return self._tag

    def retag(self) -> None:
        """Draw a new tag (not the current one) and restart the counter."""
        old = self._tag
        while self._tag == old:
            self._tag = self._rng.randrange(_TAG_LIMIT).to_bytes(TAG_BYTES, "big")
        self._counter = 0

    def _next_suffix(self) -> bytes:
        """The suffix of the next member: the tag, then the counter (retagging when it wraps)."""
        if self._counter == _COUNTER_LIMIT:
            self.retag()
        suffix = self._tag + _COUNTER.pack(self._counter)
        self._counter += 1
        return suffix

    def encode(self, value: int) -> bytes:
        """A new member holding `value`."""
        return value_prefix(value) + self._next_suffix()

    def encode_all(self, values: Iterable[int]) -> list[bytes]:
        """New members holding `values`, in their order (every value is checked before any
        suffix is used)."""
        prefixes = [value_prefix(value) for value in values]
        return [prefix + self._next_suffix() for prefix in prefixes]
