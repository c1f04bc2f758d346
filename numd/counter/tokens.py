"""The counter protocol's grammar: what a token may be, and the reply tokens of numbers.

Both ends of the wire parse the same integers, so the counter client
(`numd.client.counter`) imports `parse_integer` from here. That is why this module
imports nothing of the server (not even `numd.service`): a client pulls in only
the grammar. Its integers are signed 64-bit and its client IDs 0-10000: the
service takes both ranges from here, so each is defined once.

The regular expressions are the grammar of ``docs/protocol.md``: an integer is
``-?(0|[1-9][0-9]*)`` in ASCII, nothing else (no ``+``, no leading zeros, no
other digits), within 64 bits; an array is 1-1000 of them in brackets.
"""

from __future__ import annotations

import re
from typing import Literal

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MIN_CLIENT_ID = 0
MAX_CLIENT_ID = 10_000
MAX_ARRAY_VALUES = 1000
"""The most values one array token may carry."""

_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]{0,18})")
_ARRAY = re.compile(rb"\[-?(?:0|[1-9][0-9]{0,18})(?:,-?(?:0|[1-9][0-9]{0,18}))*\]")

SMALL_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]{0,17})")
"""An integer token of at most 18 digits: always within 64 bits, so no range check is needed.

The one-pass read handles these itself; a longer integer goes token by token."""
OLD_CLIENT_ID = re.compile(rb"[0-9]{1,5}")
"""What an older client sends as its ID, with no delimiter after it."""
PARITY: dict[bytes, Literal["even", "odd"]] = {b"even": "even", b"odd": "odd"}
"""The request tokens, and the parity each asks for."""
NUMBER_TOKENS = [b"%d" % n for n in range(100)]
"""The reply token of each number `numd.service.NumberService.give` can draw (0-99)."""
HTTP_METHODS = frozenset(b"GET HEAD POST PUT DELETE OPTIONS PATCH CONNECT TRACE PRI".split())
"""First tokens that show an HTTP client knocking on the counter port."""


def parse_integer(token: bytes) -> int | None:
    """The value of a strict ASCII decimal 64-bit integer token, else None."""
    if _INTEGER.fullmatch(token) is None:
        return None
    value = int(token)
    if INT64_MIN <= value <= INT64_MAX:
        return value
    return None


def parse_array(token: bytes) -> list[int] | None:
    """The values of an ``[a,b,c]`` token (1-1000 strict 64-bit integers), else None."""
    if _ARRAY.fullmatch(token) is None:
        return None
    values = [int(part) for part in token[1:-1].split(b",")]
    if len(values) > MAX_ARRAY_VALUES:
        return None
    for value in values:
        if not INT64_MIN <= value <= INT64_MAX:
            return None
    return values


def looks_like_http(token: bytes) -> bool:
    """Whether a first token is an HTTP method or a header name (``Host:``), not a counter token."""
    return token in HTTP_METHODS or (token.endswith(b":") and token[:1].isalpha())
