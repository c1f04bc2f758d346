"""Reading what an API request says: strict integers in its query, JSON integers in its body.

These are the only places where the API turns a client's bytes into numbers, so
they are strict and total: a query value is a plain decimal integer in its
range, a body is one 64-bit integer or a non-empty array of them, and anything
else (bad UTF-8 or JSON, booleans, floats, strings, ``null``, nested arrays, a
value out of range) is an `ApiError` with status 400 and a message saying what
was wrong, never another exception. The tests hold them to that with arbitrary
bytes.
"""

from __future__ import annotations

import json
import re

from twisted.web.iweb import IRequest

from numd.http.answers import ApiError
from numd.service import INT64_MAX, INT64_MIN

_QUERY_INT = re.compile(rb"-?[0-9]{1,20}")


def query_int(request: IRequest, name: str, default: int | None, low: int, high: int) -> int | None:
    """The last ``name=`` query value as an integer in low-high, or `default`."""
    raw = request.args.get(name.encode("ascii"))
    if not raw:
        return default
    text = raw[-1]
    if _QUERY_INT.fullmatch(text) is None:
        raise ApiError(400, "bad-parameter", f"{name} must be an integer")
    value = int(text)
    if not low <= value <= high:
        raise ApiError(400, "bad-parameter", f"{name} must be between {low} and {high}")
    return value


_JSON_KINDS = {
    bool: "boolean",
    float: "float",
    str: "string",
    type(None): "null",
    list: "nested array",
    dict: "object",
}
"""How `parse_values` names what it got instead of an integer."""


def parse_values(body: bytes) -> list[int]:
    """The integers of a JSON body: one integer, or an array of one or more.

    Raises `ApiError` (400) for bad JSON, booleans, floats, strings, ``null``,
    nested arrays and values outside the 64-bit signed range.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "bad-json", "the body is not UTF-8") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "bad-json", "the body is not valid JSON") from None
    items = document if isinstance(document, list) else [document]
    if not items:
        raise ApiError(400, "bad-value", "the array is empty; send at least one integer")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            kind = _JSON_KINDS.get(type(item), type(item).__name__)
            raise ApiError(
                400,
                "bad-value",
                f"expected an integer or an array of integers, got a {kind}",
            )
        if not INT64_MIN <= item <= INT64_MAX:
            raise ApiError(400, "bad-value", f"{item} is outside the 64-bit signed range")
    return items
