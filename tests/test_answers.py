"""numd.http.answers: one compact JSON encoding and one error shape for every layer."""

from __future__ import annotations

import json

import pytest
from twisted.web.test.requesthelper import DummyRequest

from numd.http.answers import REASONS, ApiError, json_body, json_response, raw_json_response


def test_json_body_is_compact_utf8_and_ends_with_a_newline() -> None:
    """No spaces after separators, non-ASCII kept as UTF-8 escapes, one newline at the end."""
    assert json_body({"error": "bad", "message": "é"}) == b'{"error":"bad","message":"\\u00e9"}\n'
    assert json_body([1, 2]) == b"[1,2]\n"


def test_json_response_sets_the_status_and_the_json_headers() -> None:
    """The request gets the status, the JSON content type and no-store; the body comes back."""
    request = DummyRequest([b""])
    body = json_response(request, {"status": "ok"}, 503)
    assert body == b'{"status":"ok"}\n'
    assert request.responseCode == 503
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    assert request.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]


def test_raw_json_response_is_a_whole_response_that_closes() -> None:
    """Status line, JSON headers, the extra ones, Connection: close last, then the error body."""
    answer = raw_json_response(503, "too-many-connections", "full", headers=[("Retry-After", "1")])
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 503 Service Unavailable",
        b"Content-Type: application/json",
        b"Cache-Control: no-store",
        b"Content-Length: %d" % len(body),
        b"Retry-After: 1",
        b"Connection: close",
    ]
    assert body == json_body({"error": "too-many-connections", "message": "full"})


@pytest.mark.parametrize("status", sorted(REASONS))
def test_every_status_written_on_the_wire_has_its_reason(status: int) -> None:
    """Each status numd writes itself gets a status line with its reason phrase."""
    answer = raw_json_response(status, "code", "message")
    assert answer.startswith(b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status].encode()))
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "code", "message": "message"}


def test_api_error_carries_what_the_answer_says() -> None:
    """An ApiError keeps its status, code and message; its text is the message."""
    error = ApiError(404, "unknown-client", "no client with ID 7")
    assert (error.status, error.code, error.message) == (
        404,
        "unknown-client",
        "no client with ID 7",
    )
    assert str(error) == "no client with ID 7"
