"""How numd answers over HTTP: one JSON encoding and one error shape, whichever layer answers.

Three layers refuse requests: the connection (`numd.http.channel`, before there
is a request to answer through, or when Twisted's parser is in no state to give
one), the Host/token/CORS guard (`numd.http.guard`) and the routes
(`numd.http.api`). A client should not have to know which one spoke, so every
error body is ``{"error":code,"message":text}`` in the same compact JSON
(`json_body`): the routes and the guard answer through their `Request`
(`json_response`, `ApiError`), the connection writes a whole response to the
socket (`raw_json_response`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from twisted.web.iweb import IRequest

JSON_TYPE = b"application/json"

REASONS = {
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
"""The reason phrase of each status numd writes itself, on the wire."""


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": message}`` with `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_body(body: object) -> bytes:
    """`body` as compact JSON and a newline: the one encoding of every numd answer."""
    return json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"


def json_response(request: IRequest, body: object, status: int = 200) -> bytes:
    """Set the status and JSON headers on `request`; return `body` as JSON bytes."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    return json_body(body)


def raw_json_response(
    status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A whole HTTP/1.1 error response, ``{"error": code, "message": message}``, ending the connection.

    For answers written straight to the socket, where there is no `Request`
    to answer through (the request line or headers are broken, or not read).
    """
    body = json_body({"error": code, "message": message})
    head = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        "Content-Type: application/json",
        "Cache-Control: no-store",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers),
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


LEGACY_TYPE = b"text/html; charset=utf-8"
"""The older server's content type for its plain-text routes."""


def legacy_repr(values: Sequence[int]) -> str:
    """The list as the older server printed its `SortedList`: ``SortedList([1, 2, 3])``."""
    return f"SortedList({list(values)!r})"


def legacy_response(request: IRequest, text: str) -> bytes:
    """A 200 answer of the older server's plain-text routes."""
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", LEGACY_TYPE)
    return text.encode("utf-8")
