"""The HTTP connection's own guards: a deadline per request, a body cap, JSON for every refusal.

Twisted's `HTTPChannel` keeps a connection open as long as bytes trickle in
(its idle timer restarts at every byte), reads any body into a temporary file,
answers what its parser refuses with a bare ``400`` or a silent close, and has
no cap on open connections. Each of those let one client tie up the daemon, and
each has to be caught on the wire, before a `Request` reaches the API:

- every request, from its first byte to the end of its body, must arrive within
  the request timeout, or it gets 408 and the connection is closed (a slow loris
  that trickles its request line is caught as surely as one that trickles
  headers or a body);
- a body announced or grown past the cap gets 413 and is not read;
- a request that Twisted's parser refuses (a bad request line, a malformed or
  conflicting header, too many or too long headers, a bad chunked body, an HTTP
  version other than 1.0 and 1.1) gets numd's JSON error;
- past the site's connection cap a new connection gets `TooManyConnections`: a
  JSON 503 and a close, before any of its bytes are read.

Each refusal is written straight to the socket with ``Connection: close``
(`numd.http.answers.raw_json_response`), and the connection is closed. The site
these classes serve is `numd.http.site.ApiSite`; the Host, token and CORS checks
come after them, in `numd.http.guard`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

from numd.http.answers import json_response, raw_json_response
from numd.messagelog import describe_peer
from numd.stats import Stats
from numd.timers import cancel

# -- the wire: what Twisted's parser refuses, and why -----------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTTP_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_SERVED_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")
_LENGTH_HEADERS = (b"content-length", b"transfer-encoding")

Problem = tuple[int, str, str]
"""How numd answers a refused request: status, error code, message."""


def request_line_problem(line: bytes) -> Problem:
    """What is wrong with a request line that Twisted refused.

    An ``HTTP/x.y`` version other than 1.0 and 1.1 (the HTTP/2 preface
    ``PRI * HTTP/2.0`` included) is 505; anything else is 400 ``bad-request-line``.
    """
    parts = line.split(b" ")
    if len(parts) == 3 and _HTTP_VERSION.fullmatch(parts[2]) and parts[2] not in _SERVED_VERSIONS:
        return (505, "http-version-not-supported",
                "only HTTP/1.1 and HTTP/1.0 are served (no HTTP/2 without TLS)")  # fmt: skip
    if not line:
        why = "the request line is empty"
    elif len(parts) != 3:
        why = "the request line must be METHOD, target and version, separated by single spaces"
    elif _TOKEN.fullmatch(parts[0]) is None:
        why = "the method is not a token"
    elif not parts[1] or any(c <= 0x20 or c >= 0x7F for c in parts[1]):
        why = "the request target is empty or has a control, space or non-ASCII byte"
    elif parts[2] not in _SERVED_VERSIONS:
        why = "the version must be HTTP/1.1 or HTTP/1.0"
    else:
        why = "the request line is malformed"
    return 400, "bad-request-line", why


def header_problem(line: bytes, earlier: Headers) -> Problem:
    """What is wrong with a header line that Twisted refused; `earlier` holds the request's accepted headers.

    A repeated, conflicting or unreadable ``Content-Length`` / ``Transfer-Encoding``
    is ``bad-length`` (they decide where the body ends: request smuggling lives
    there); any other malformed line is ``bad-header``. Both are 400.
    """
    name, colon, value = line.partition(b":")
    if not colon:
        return 400, "bad-header", "a header line has no colon"
    if _TOKEN.fullmatch(name) is None:
        return 400, "bad-header", "a header name is not a token (no spaces or control bytes)"
    if any(c in value for c in b"\x00\r\n"):
        return 400, "bad-header", "a header value has a NUL, CR or LF byte"
    lowered = name.lower()
    if lowered in _LENGTH_HEADERS:
        if any(earlier.hasHeader(h) for h in _LENGTH_HEADERS):
            return (400, "bad-length",
                    "a request may have one Content-Length or one Transfer-Encoding, "
                    "not both and not two of either")  # fmt: skip
        if lowered == b"content-length":
            return 400, "bad-length", "Content-Length is not a decimal number"
        return 400, "bad-length", "the only Transfer-Encoding accepted is chunked"
    return 400, "bad-header", "a header line is malformed"


_REQUEST_LINE, _HEADERS, _BODY = "request line", "headers", "body"


class GuardedSite(TypingProtocol):
    """What the guards need of their site (`numd.http.site.ApiSite` has it)."""

    request_timeout: float
    """Seconds a request may take to arrive, from its first byte."""
    max_body: int
    """Largest request body, in bytes."""
    connections: set[GuardedChannel]
    """The open connections: each channel is in it while connected."""
    stats: Stats
    """Connections opened and closed, refusals by error code."""


class GuardedChannel(HTTPChannel):
    """An HTTP connection that bounds the time of each request and answers every refusal in JSON.

    The request deadline starts at the first byte of each request (or, for a
    pipelined request, when numd starts reading it) and ends when its body is
    complete; Twisted's own idle timer, reset by every byte, cannot catch a
    request that trickles in. While a request is being answered its deadline is
    off, so a long answer (an event stream) is not cut.

    Its site is a `GuardedSite`.
    """

    site: GuardedSite
    log = Logger()
    _deadline: IDelayedCall | None = None
    _abort_call: IDelayedCall | None = None
    _refused = False
    _answering = False
    _phase = _REQUEST_LINE
    _request_line = b""
    _header_line = b""
    _head_bytes = 0
    _header_count = 0

    def connectionMade(self) -> None:
        """Count the connection against the site's cap, then start as Twisted does."""
        self.site.connections.add(self)
        self.site.stats.connections["opened"] += 1
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Free the connection's slot and stop its timers."""
        if self in self.site.connections:
            self.site.connections.discard(self)
            self.site.stats.connections["closed"] += 1
        self._cancel_deadline()
        cancel(self._abort_call)
        self._abort_call = None
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        """Start the request deadline at a request's first byte; ignore anything after a refusal."""
        if self._refused:
            return
        if self._deadline is None and not self._answering:
            self._start_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        """Note where in the request the parser is, so a refusal can say what was wrong."""
        if self._refused:
            return
        if self._deadline is None:
            self._start_deadline()  # a pipelined request, read in the same turn as the last answer
        self._head_bytes += len(line)
        if self._phase is _REQUEST_LINE:
            self._request_line = line
            super().lineReceived(line)
            if line and not self._refused:
                self._phase = _HEADERS
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        """Note the header line Twisted is about to check."""
        self._header_line = line
        self._header_count += 1
        return super().headerReceived(line)

    def allHeadersReceived(self) -> None:
        """The head is complete: what follows is the body."""
        self._phase = _BODY
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        """The whole request arrived in time: stop its deadline, then answer it."""
        self._cancel_deadline()
        self._phase = _REQUEST_LINE
        self._head_bytes = self._header_count = 0
        self._answering = True
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        """The answer is written: the next byte starts the next request's deadline."""
        self._answering = False
        super().requestDone(request)

    def timeoutConnection(self) -> None:
        """Idle for the idle timeout: in the middle of a request that is a 408, else a silent close."""
        if self._deadline is not None:
            self._too_slow()
        else:
            super().timeoutConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request line or header line over `MAX_LENGTH`: 414 or 431 (Twisted just hangs up)."""
        if self._phase is _REQUEST_LINE:
            self.refuse(414, "request-line-too-long",
                        f"the request line is longer than {self.MAX_LENGTH} bytes")  # fmt: skip
        else:
            self.refuse(431, "header-too-long",
                        f"a header line is longer than {self.MAX_LENGTH} bytes")  # fmt: skip

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Every request Twisted's parser refuses comes here: answer it in JSON (Twisted sends no body)."""
        self.refuse(*self._problem())

    def _problem(self) -> Problem:
        if self._answering:
            return 400, "bad-body", "the request body could not be parsed"
        if self._phase is _BODY:
            return 400, "bad-chunk", "the chunked body is malformed"
        if self._head_bytes > self.totalHeadersSize:
            return (431, "headers-too-large",
                    f"the request line and headers are longer than {self.totalHeadersSize} bytes")  # fmt: skip
        if self._header_count > self.maxHeaders:
            return 431, "too-many-headers", f"the request has more than {self.maxHeaders} headers"
        if self._phase is _REQUEST_LINE or not self.requests:
            return request_line_problem(self._request_line)
        return header_problem(self._header_line, self.requests[-1].requestHeaders)

    def refuse(
        self, status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Answer `status` with numd's JSON error and close; later bytes are ignored.

        The answer goes straight to the socket, so it can be sent whatever
        state the parser is in. If the client does not read it, the connection
        is aborted after `abortTimeout` seconds, as Twisted does on a timeout.
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        self.site.stats.errors[code] += 1
        assert self.transport is not None  # connected: the refusal answers bytes it received
        self.log.info("refused a request from {peer}: {status} {code}",
                      peer=describe_peer(self.transport.getPeer()), status=status, code=code)  # fmt: skip
        if self.abortTimeout is not None:  # before the close, which may be at once
            self._abort_call = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.transport.write(raw_json_response(status, code, message, headers))
        self.loseConnection()

    def _start_deadline(self) -> None:
        self._deadline = self.callLater(self.site.request_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        self.refuse(408, "request-timeout",
                    "the request line, headers and body did not all arrive in time")  # fmt: skip

    def _cancel_deadline(self) -> None:
        cancel(self._deadline)
        self._deadline = None


class TooManyConnections(Protocol):
    """What a connection past the site's cap gets: a JSON 503 and a close, without reading a byte.

    The answer fits the socket's send buffer, so the descriptor is freed in
    the same reactor turn. A client still sending its request when the close
    arrives may see a reset instead of the answer.
    """

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections

    def connectionMade(self) -> None:
        """Answer 503 with Retry-After and close."""
        assert self.transport is not None
        self.transport.write(
            raw_json_response(
                503,
                "too-many-connections",
                f"{self._max_connections} HTTP connections are open already; try again later",
                headers=[("Retry-After", "1")],
            )
        )
        self.transport.loseConnection()


class GuardedRequest(Request):
    """A request refused as early as possible when its body is too big; its errors are JSON.

    Its channel must be a `GuardedChannel`.
    """

    channel: GuardedChannel

    log = Logger()
    _refused = False
    _body_bytes = 0

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self._max_body: int = channel.site.max_body

    def gotLength(self, length: int | None) -> None:
        """Refuse at once a body whose announced length is over the cap."""
        if length is not None and length > self._max_body:
            self._too_large()
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Count the body as it arrives; refuse it the moment it passes the cap."""
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._max_body:
            self._too_large()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Handle the request unless it was refused."""
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def process(self) -> None:
        """Answer ``* `` with any method but OPTIONS in JSON (Twisted's 405 has no body)."""
        if self.path == b"*" and self.method != b"OPTIONS":
            site = self.channel.site
            assert isinstance(site, Site)  # an ApiSite: a Site that is also a GuardedSite
            self.site = site
            self.setHeader(b"Allow", b"OPTIONS")
            self._finish_with(
                json_response(
                    self,
                    {"error": "method-not-allowed", "message": "only OPTIONS is allowed on *"},
                    405,
                )
            )
            return
        super().process()

    def processingFailed(self, reason: Failure) -> Failure:
        """A failure outside the API's own error handling: a JSON 500, the traceback in the log only.

        If the answer had started already, the connection is closed instead.
        """
        self.log.failure("unexpected error answering {method} {uri}", reason,
                         method=self.method, uri=self.uri)  # fmt: skip
        if self.startedWriting or self.finished:
            self.channel.loseConnection()
            return reason
        self._finish_with(
            json_response(self, {"error": "internal", "message": "internal server error"}, 500)
        )
        return reason

    def _finish_with(self, body: bytes) -> None:
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def _too_large(self) -> None:
        self._refused = True
        self.channel.refuse(
            413, "body-too-large", f"the body is larger than {self._max_body} bytes"
        )
