"""The counter protocol's grammar (`numd.counter.tokens`): parsers, reply tokens, and what
the counter client pulls in with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import numd.service
from numd.counter.tokens import (
    INT64_MAX,
    INT64_MIN,
    NUMBER_TOKENS,
    PARITY,
    SMALL_INTEGER,
    looks_like_http,
    parse_array,
    parse_integer,
)


def test_parsers() -> None:
    """The strict integer and array grammars."""
    assert parse_integer(b"0") == 0
    assert parse_integer(b"-12") == -12
    for bad in (b"", b"-", b"007", b"+1", b"1_0", b" 1", b"\xd9\xa1", b"--5", b"-0" + b"1"):
        assert parse_integer(bad) is None
    assert parse_array(b"[1,-2,3]") == [1, -2, 3]
    assert parse_array(b"[1,2") is None


@given(st.binary(max_size=40))
def test_integer_parser_agrees_with_the_grammar(data: bytes) -> None:
    """parse_integer accepts exactly ASCII -?(0|[1-9][0-9]*) within 64 bits."""
    import re

    expected = None
    if re.fullmatch(rb"-?(0|[1-9][0-9]*)", data) and -(2**63) <= int(data) < 2**63:
        expected = int(data)
    assert parse_integer(data) == expected


@given(st.lists(st.integers(min_value=-(2**64), max_value=2**64), min_size=0, max_size=1100))
def test_array_parser_round_trips(values: list[int]) -> None:
    """parse_array accepts exactly 1-1000 64-bit values written in the array notation."""
    token = b"[" + b",".join(b"%d" % v for v in values) + b"]"
    ok = 1 <= len(values) <= 1000 and all(-(2**63) <= v < 2**63 for v in values)
    assert parse_array(token) == (values if ok else None)


def test_the_wire_range_is_the_states_range() -> None:
    """The grammar's 64-bit bounds are those the service and the store keep (defined apart so
    that the client, which parses the same integers, imports nothing of the server)."""
    assert (INT64_MIN, INT64_MAX) == (numd.service.INT64_MIN, numd.service.INT64_MAX)
    assert (INT64_MIN, INT64_MAX) == (-(2**63), 2**63 - 1)


def test_number_tokens_and_parities() -> None:
    """A drawn number's reply token is its decimal text; the two request tokens name their parity."""
    assert NUMBER_TOKENS == [str(n).encode() for n in range(100)]
    assert PARITY == {b"even": "even", b"odd": "odd"}


@given(st.binary(max_size=24) | st.integers(-(10**19), 10**19).map(lambda n: b"%d" % n))
def test_a_small_integer_is_a_valid_integer_of_18_digits_at_most(token: bytes) -> None:
    """What the one-pass read takes for a report is exactly an integer token of at most 18
    digits: always within 64 bits, so it needs no range check."""
    small = SMALL_INTEGER.fullmatch(token) is not None
    digits = len(token.lstrip(b"-"))
    assert small == (parse_integer(token) is not None and digits <= 18)


def test_http_first_tokens() -> None:
    """HTTP methods and header names look like HTTP; counter tokens and other words do not."""
    for token in (b"GET", b"POST", b"PRI", b"Host:", b"content-length:"):
        assert looks_like_http(token)
    for token in (b"get", b"5", b"even", b"[1]", b":", b"1:", b"hello"):
        assert not looks_like_http(token)


def test_the_counter_client_imports_only_wire_helpers() -> None:
    """Every module of the client (`numd-client` and its plugin included) imports the grammar,
    the framing and the timers of numd, and the process's signal handling, nothing of the
    server (its state, its listeners, its store)."""
    code = (
        "import sys, numd.client.counter, numd.client.array, numd.client.console, "
        "numd.client.output, numd.client.tap, numd.client.testing; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('numd'))))"
    )
    checkout = Path(__file__).parent.parent
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=checkout
    ).stdout.split()
    shared = {
        "numd",
        "numd.counter",
        "numd.counter.framing",
        "numd.counter.tokens",
        "numd.timers",
        "numd.signals",  # exit 0 on SIGTERM/SIGINT, as the daemon does
    }
    assert {m for m in loaded if not m.startswith("numd.client")} <= shared
