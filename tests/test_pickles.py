"""Framing and decoding of the old array clients' pickles (`numd.counter.pickles`), on bytes
alone: no global is ever loaded, every real request passes, anything else is a `BadRequest`."""

from __future__ import annotations

import os
import pickle
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numd.counter.pickles import (
    BadRequest,
    RefusingUnpickler,
    decode_request,
    find_pickle_end,
    unpickle_list,
)
from numd.counter.tokens import INT64_MAX, INT64_MIN

from .pickle_samples import CANARY, PROTOCOLS, global_pickle, int64s, mutated_pickles


def test_the_unpickler_itself_refuses_every_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even without the opcode check, RefusingUnpickler never imports or calls a global."""
    import io

    assert CANARY not in sys.modules
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    for data in (
        global_pickle("os", "system", "true"),
        global_pickle(CANARY, "x"),
        pickle.dumps(os.getcwd, protocol=4),
    ):
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            RefusingUnpickler(io.BytesIO(data)).load()
    assert calls == [] and CANARY not in sys.modules
    with pytest.raises(pickle.UnpicklingError):
        RefusingUnpickler(io.BytesIO(b"\x80\x02X\x01\x00\x00\x00aQ.")).load()


@pytest.mark.parametrize(
    "value", [INT64_MAX, INT64_MIN, 99999999999999999999, -99999999999999999999, 10**19]
)
def test_text_integers_up_to_20_digits_are_framed_then_range_checked(value: int) -> None:
    """A text INT or LONG of up to 20 digits passes framing; the 64-bit range is checked after."""
    for opcode, suffix in ((b"I", b""), (b"L", b"L")):
        data = b"\x80\x02]q\x00(" + opcode + str(value).encode() + suffix + b"\ne."
        assert find_pickle_end(data, 0, len(data)) == (len(data), len(data))
        if INT64_MIN <= value <= INT64_MAX:
            assert decode_request(data) == [value]
        else:
            with pytest.raises(BadRequest) as raised:
                decode_request(data)
            assert raised.value.reason == "not-int"


def test_unpickle_list_never_formats_a_huge_integer() -> None:
    """Even past framing, an integer of 12,000 digits is a short not-int error (formatting it
    would raise ValueError: Python refuses int-to-text conversions past 4,300 digits)."""
    with pytest.raises(BadRequest) as raised:
        unpickle_list(pickle.dumps([10**12000], protocol=4))
    assert raised.value.reason == "not-int"
    assert len(raised.value.detail) < 100


def test_decode_request_walks_the_opcodes_first() -> None:
    """decode_request is safe for bytes that were never framed: the memo bomb and trailing or
    missing bytes are refused before unpickling."""
    cases = [
        (b"\x80\x02]r\x00\x00\x40\x00.", "memo-index"),
        (pickle.dumps([1], protocol=2) + b"x", "bad-pickle"),
        (pickle.dumps([1], protocol=2)[:-1], "bad-pickle"),
    ]
    for data, reason in cases:
        with pytest.raises(BadRequest) as raised:
            decode_request(data)
        assert raised.value.reason == reason


edge_int64s = st.sampled_from(
    [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**31, 2**32, INT64_MAX, INT64_MIN]
)


old_client_lists = st.lists(st.one_of(int64s, edge_int64s), min_size=10, max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(old_client_lists, st.lists(st.integers(0, 70000), max_size=1500)),
    protocol_version=st.sampled_from(PROTOCOLS),
    pure_python=st.booleans(),
)
def test_every_list_the_old_client_sends_is_accepted(
    value: list[int], protocol_version: int, pure_python: bool
) -> None:
    """Any list of 64-bit ints pickled with protocol 2-5, by the C or the pure-Python pickler
    (10-20 values as the old client sends, or over a thousand: several APPENDS batches and
    frames), passes framing whole and decodes to itself."""
    dumps = pickle._dumps if pure_python else pickle.dumps  # type: ignore[attr-defined]
    data = dumps(value, protocol=protocol_version)
    assert find_pickle_end(data, 0, len(data)) == (len(data), len(data))
    assert decode_request(data) == value


json_like = st.recursive(
    st.none() | st.booleans() | int64s | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=json_like, protocol_version=st.sampled_from(PROTOCOLS))
def test_memo_and_integer_bounds_refuse_no_real_pickle(
    value: object, protocol_version: int
) -> None:
    """The memo-index and integer bounds never refuse what pickle.dumps writes, even with many
    memoized objects (strings, lists, dicts, tuples, shared references)."""
    data = pickle.dumps([value, value], protocol=protocol_version)
    assert find_pickle_end(data, 0, len(data)) == (len(data), len(data))


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300) | mutated_pickles())
def test_decode_request_raises_only_bad_request(data: bytes) -> None:
    """decode_request returns a list of 64-bit ints or raises BadRequest, for any bytes."""
    try:
        value = decode_request(data)
    except BadRequest:
        return
    assert type(value) is list
    assert all(type(v) is int and INT64_MIN <= v <= INT64_MAX for v in value)


@settings(max_examples=200, deadline=None)
@given(
    value=st.lists(int64s, max_size=40),
    protocol_version=st.sampled_from(PROTOCOLS),
    cuts=st.lists(st.integers(min_value=1, max_value=600), max_size=8),
)
def test_a_request_split_anywhere_is_walked_once(
    value: list[int], protocol_version: int, cuts: list[int]
) -> None:
    """Fed a request in pieces, the walk resumes where the last complete opcode ended: the
    resume offset never goes back, stays within the bytes received, and the end is found
    once the last piece arrives."""
    data = pickle.dumps(value, protocol=protocol_version)
    resume = 0
    for cut in sorted({c for c in cuts if c < len(data)}):
        end, next_resume = find_pickle_end(data[:cut], resume, len(data))
        assert end is None
        assert resume <= next_resume <= cut
        resume = next_resume
    assert find_pickle_end(data, resume, len(data)) == (len(data), len(data))
