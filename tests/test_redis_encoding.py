"""The sorted-list member encoding for Redis: bytewise order is value order, exactly, at 64 bits."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numd.service import INT64_MAX, INT64_MIN
from numd.store.redis.encoding import (
    MAX_BOUND,
    MEMBER_BYTES,
    MIN_BOUND,
    MemberEncoder,
    below_bound,
    decode_member,
    decode_members,
    lex_bounds,
    split_members,
    value_prefix,
)

EXTREMES = [INT64_MIN, INT64_MIN + 1, -(2**53) - 1, -(2**53), -1, 0, 1]
EXTREMES += [2**53 - 1, 2**53, 2**53 + 1, 2**63 - 2, INT64_MAX]

int64 = st.integers(INT64_MIN, INT64_MAX)
# Values drawn from a small pool as often as not, so that duplicates are common.
values_strategy = st.lists(
    st.one_of(st.sampled_from(EXTREMES), int64, st.integers(-3, 3)), max_size=60
)


def in_lex_range(member: bytes, minimum: bytes, maximum: bytes) -> bool:
    """Whether Redis's ``ZRANGE ... BYLEX`` (all scores equal) selects `member` between the bounds."""
    if minimum != MIN_BOUND:
        if minimum[:1] == b"[" and not member >= minimum[1:]:
            return False
        if minimum[:1] == b"(" and not member > minimum[1:]:
            return False
    if maximum != MAX_BOUND:
        if maximum[:1] == b"[" and not member <= maximum[1:]:
            return False
        if maximum[:1] == b"(" and not member < maximum[1:]:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(values=values_strategy, seed=st.integers(0, 2**32))
def test_member_order_is_value_order(values: list[int], seed: int) -> None:
    """Members sorted bytewise decode to the values in Python's order, duplicates kept."""
    encoder = MemberEncoder(random.Random(seed))
    members = encoder.encode_all(values)
    assert len(set(members)) == len(members)
    assert decode_members(sorted(members)) == sorted(values)


@settings(max_examples=100, deadline=None)
@given(values=values_strategy, seed=st.integers(0, 2**32))
def test_order_holds_across_tags(values: list[int], seed: int) -> None:
    """Members from two encoders (two instances) interleave in value order too."""
    rng = random.Random(seed)
    first, second = MemberEncoder(rng), MemberEncoder(rng)
    members = [(first if rng.random() < 0.5 else second).encode(v) for v in values]
    assert decode_members(sorted(members)) == sorted(values)


def test_extremes_in_order() -> None:
    """-2^63, the edges of exact doubles (2^53, 2^53+1) and 2^63-1 sort exactly, each twice."""
    encoder = MemberEncoder(random.Random(1))
    values = EXTREMES * 2
    random.Random(2).shuffle(values)
    members = encoder.encode_all(values)
    assert decode_members(sorted(members)) == sorted(values)
    assert value_prefix(INT64_MIN) == bytes(8)
    assert value_prefix(INT64_MAX) == b"\xff" * 8
    assert value_prefix(2**53) < value_prefix(2**53 + 1)


@given(value=int64)
def test_round_trip(value: int) -> None:
    """A member decodes back to the value it was made from, and is 16 bytes long."""
    member = MemberEncoder(random.Random(0)).encode(value)
    assert len(member) == MEMBER_BYTES
    assert decode_member(member) == value


@pytest.mark.parametrize("value", [INT64_MIN - 1, INT64_MAX + 1, True, 2**64])
def test_out_of_range_values_are_refused(value: int) -> None:
    """A value outside the signed 64-bit range (or a bool) is refused, naming it."""
    with pytest.raises(ValueError, match="is not a 64-bit integer"):
        value_prefix(value)


def test_refused_batch_uses_no_suffix() -> None:
    """A batch with one bad value is refused whole, before any suffix is spent."""
    encoder = MemberEncoder(random.Random(3))
    with pytest.raises(ValueError):
        encoder.encode_all([1, 2, INT64_MAX + 1])
    assert encoder.encode(5)[8:] == encoder.tag + bytes(4)


@pytest.mark.parametrize("member", [b"", bytes(15), bytes(17)])
def test_decode_refuses_wrong_lengths(member: bytes) -> None:
    """Only 16-byte members decode."""
    with pytest.raises(ValueError, match="a member is 16 bytes"):
        decode_member(member)


def test_duplicates_get_distinct_suffixes() -> None:
    """The same value encoded again is a different member, sorting next to the first."""
    encoder = MemberEncoder(random.Random(4))
    a, b = encoder.encode(7), encoder.encode(7)
    assert a != b and a[:8] == b[:8]
    assert sorted([encoder.encode(8), b, encoder.encode(6), a])[1:3] == [a, b]


def test_counter_wrap_draws_a_new_tag() -> None:
    """When the 32-bit counter runs out, the encoder moves to a new tag and starts again."""
    encoder = MemberEncoder(random.Random(5))
    old = encoder.tag
    encoder._counter = 2**32 - 1
    last = encoder.encode(1)
    assert last[8:] == old + b"\xff" * 4
    wrapped = encoder.encode(1)
    assert encoder.tag != old
    assert wrapped[8:] == encoder.tag + bytes(4)


def test_retag_changes_the_tag() -> None:
    """`retag` (after a collision) always yields a different tag, even from a stuck source."""

    class Stuck(random.Random):
        draws = iter([9, 9, 9, 10])

        def randrange(self, *args: object, **kwargs: object) -> int:
            return next(self.draws)

    encoder = MemberEncoder(Stuck())
    assert encoder.tag == (9).to_bytes(4, "big")
    encoder.retag()
    assert encoder.tag == (10).to_bytes(4, "big")


@settings(max_examples=300, deadline=None)
@given(
    values=values_strategy,
    low=st.one_of(st.none(), st.sampled_from(EXTREMES), int64, st.integers(-4, 4)),
    high=st.one_of(st.none(), st.sampled_from(EXTREMES), int64, st.integers(-4, 4)),
)
def test_lex_bounds_select_exactly_the_range(
    values: list[int], low: int | None, high: int | None
) -> None:
    """The BYLEX bounds for [low, high] select exactly the values within it, duplicates included."""
    members = MemberEncoder(random.Random(6)).encode_all(values)
    minimum, maximum = lex_bounds(low, high)
    chosen = sorted(m for m in members if in_lex_range(m, minimum, maximum))
    expected = sorted(
        v for v in values if (low is None or v >= low) and (high is None or v <= high)
    )
    assert decode_members(chosen) == expected


@settings(max_examples=200, deadline=None)
@given(values=values_strategy, value=st.one_of(st.sampled_from(EXTREMES), int64))
def test_below_bound_counts_smaller_values(values: list[int], value: int) -> None:
    """``[-, below_bound(v))`` holds exactly the values smaller than v (``count_below``)."""
    members = MemberEncoder(random.Random(7)).encode_all(values)
    count = sum(in_lex_range(m, MIN_BOUND, below_bound(value)) for m in members)
    assert count == sum(v < value for v in values)


def test_open_and_extreme_bounds() -> None:
    """Open ends are Redis's - and +; 2^63-1 as the high end is + as well."""
    assert lex_bounds() == (b"-", b"+")
    assert lex_bounds(None, INT64_MAX) == (b"-", b"+")
    assert lex_bounds(INT64_MIN, None) == (b"[" + bytes(8), b"+")
    assert lex_bounds(0, 0) == (b"[" + value_prefix(0), b"(" + value_prefix(1))


def test_split_members() -> None:
    """A concatenation of members (a merge's stream entry) splits back into them."""
    members = MemberEncoder(random.Random(8)).encode_all([3, 1, 2])
    assert split_members(b"".join(members)) == members
    assert split_members(b"") == []
    with pytest.raises(ValueError, match="not a whole number"):
        split_members(bytes(17))
