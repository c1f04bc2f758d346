"""numd.http.parsing: strict integers from the query and from JSON bodies, and nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.test.requesthelper import DummyRequest

from numd.http.answers import ApiError
from numd.http.parsing import parse_values, query_int
from numd.service import INT64_MAX, INT64_MIN

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(document=json_values)
def test_parse_values_accepts_exactly_integers_and_arrays_of_them(
    document: object,
) -> None:
    """Any JSON document is either a (non-empty array of) 64-bit integer(s) or a 400."""
    items = document if isinstance(document, list) else [document]
    valid = bool(items) and all(
        type(item) is int and INT64_MIN <= item <= INT64_MAX for item in items
    )
    body = json.dumps(document).encode()
    if valid:
        assert parse_values(body) == items
    else:
        with pytest.raises(ApiError) as caught:
            parse_values(body)
        assert caught.value.status == 400


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64))
def test_parse_values_never_fails_otherwise_on_bytes(body: bytes) -> None:
    """Arbitrary bytes give a list of integers or a 400, never another exception."""
    try:
        values = parse_values(body)
    except ApiError as e:
        assert e.status == 400
    else:
        assert values and all(type(v) is int for v in values)


@pytest.mark.parametrize(
    "args,expected",
    [
        ({}, 5),
        ({b"limit": [b"7"]}, 7),
        ({b"limit": [b"1", b"9"]}, 9),
        ({b"limit": [b"-0"]}, 0),
        ({b"limit": [b"10"]}, 10),
    ],
)
def test_query_int_takes_the_last_value_or_the_default(args: dict, expected: int) -> None:
    """The last value given for the name, or the default when the name is absent."""
    request = DummyRequest([b""])
    request.args = args
    assert query_int(request, "limit", 5, 0, 10) == expected


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"", "limit must be an integer"),
        (b"+1", "limit must be an integer"),
        (b"1.0", "limit must be an integer"),
        (b" 1", "limit must be an integer"),
        (b"1" * 21, "limit must be an integer"),
        (b"11", "limit must be between 0 and 10"),
        (b"-1", "limit must be between 0 and 10"),
    ],
)
def test_query_int_refuses_anything_but_a_decimal_in_range(raw: bytes, message: str) -> None:
    """Signs, spaces, fractions, over-long digits and out-of-range values are each a 400 that says why."""
    request = DummyRequest([b""])
    request.args = {b"limit": [raw]}
    with pytest.raises(ApiError) as caught:
        query_int(request, "limit", 5, 0, 10)
    error = caught.value
    assert (error.status, error.code, error.message) == (400, "bad-parameter", message)
